"""The fleet view's shaping (operations.api.fleet_body): states, margins, staleness and open alerts per
stream, from VictoriaMetrics answers and the alert manager's open alerts."""

from __future__ import annotations

from typing import Any

from smap_shared.fleet import Fleet
from smap_shared.operations.api import fleet_body
from smap_shared.operations.vm import Series

NOW = 1_800_000_000.0
FLEET = Fleet.model_validate({"deployed": ["A-1", "A-2"], "satellites": [
    {"id": "SAT-001", "entities": ["A-1", "A-2"]}, {"id": "SAT-002", "entities": ["A-1", "A-2"]}]})


def last(name: str, sat: str, entity: str, value: float) -> Series:
    return Series({"__name__": name, "satellite_id": sat, "entity": entity}, [NOW], [value])


def stream(sat: str, entity: str, score: float, detected: int, signal: float, threshold: float) -> list[Series]:
    values = {"smap_anomaly_score": score, "smap_anomaly_detected": detected, "smap_detector_signal": signal,
              "smap_anomaly_threshold": threshold}
    return [last(name, sat, entity, v) for name, v in values.items()]


def alert(i: int, sat: str, entity: str, severity: str, shelved: bool = False) -> dict[str, Any]:
    return {"id": i, "satellite_id": sat, "entity": entity, "severity": severity, "shelved": shelved}


def body(alerts: list[dict[str, Any]] | None) -> dict[str, Any]:
    lasts = (stream("SAT-001", "A-1", 0.2, 0, 0.5, 2.0) + stream("SAT-001", "A-2", 3.0, 1, 5.0, 2.0)
             + stream("SAT-002", "A-1", 0.1, 0, 0.1, 2.0))
    stamps = [last("smap_anomaly_score", sat, entity, at) for sat, entity, at in (
        ("SAT-001", "A-1", NOW - 2), ("SAT-001", "A-2", NOW), ("SAT-002", "A-1", NOW - 300))]  # SAT-002/A-2: none
    return fleet_body(FLEET, NOW, 600, 60, lasts, stamps, alerts)


def test_each_stream_gets_its_state_margin_and_age() -> None:
    out = body([])
    rows = {(sat["id"], r["entity"]): r for sat in out["satellites"] for r in sat["streams"]}
    assert [(k, r["state"]) for k, r in rows.items()] == [
        (("SAT-001", "A-1"), "normal"), (("SAT-001", "A-2"), "anomaly"), (("SAT-002", "A-1"), "stale"),
        (("SAT-002", "A-2"), "unknown")]
    assert rows[("SAT-001", "A-1")]["margin"] == 0.25 and rows[("SAT-001", "A-2")]["margin"] == 2.5
    assert rows[("SAT-001", "A-1")]["age_s"] == 2 and rows[("SAT-002", "A-2")]["age_s"] is None
    assert rows[("SAT-002", "A-2")]["anomaly_score"] is None and rows[("SAT-002", "A-2")]["margin"] is None
    assert out["summary"] == {"streams": 4, "normal": 1, "anomaly": 1, "stale": 1, "unknown": 1, "open_alerts": 0}


def test_open_alerts_are_counted_per_stream_with_the_worst_severity() -> None:
    out = body([alert(7, "SAT-001", "A-2", "warning"), alert(9, "SAT-001", "A-2", "critical", shelved=True),
                alert(3, "SAT-002", "A-2", "info"), alert(4, "SAT-009", "A-1", "critical")])  # not in the fleet
    rows = {(sat["id"], r["entity"]): r for sat in out["satellites"] for r in sat["streams"]}
    assert rows[("SAT-001", "A-2")]["alerts"] == {"open": 2, "shelved": 1, "severity": "critical", "ids": [7, 9]}
    assert rows[("SAT-002", "A-2")]["alerts"] == {"open": 1, "shelved": 0, "severity": "info", "ids": [3]}
    assert rows[("SAT-001", "A-1")]["alerts"] == {"open": 0, "shelved": 0, "severity": None, "ids": []}
    assert out["summary"]["open_alerts"] == 3  # SAT-009's is no stream of this fleet


def test_without_the_alert_manager_the_alerts_are_unknown_not_zero() -> None:
    out = body(None)
    assert out["summary"]["open_alerts"] is None
    assert all(r["alerts"] is None for sat in out["satellites"] for r in sat["streams"])
