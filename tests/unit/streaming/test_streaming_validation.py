"""Raw Kafka bytes -> TelemetryMessage / InferenceResult, or the dead-letter reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from smap_shared.data import default_source
from smap_shared.fleet import Fleet
from smap_shared.schemas import DeadLetter, TelemetryMessage
from smap_shared.streaming import validation as v
from smap_shared.streaming.validation import Invalid, validate_telemetry


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_valid_frame_passes(
    frame: Callable[..., dict[str, Any]], fleet: Fleet, widths: dict[str, int]
) -> None:
    msg = v.validate_telemetry(_dumps(frame()), fleet, widths)
    assert isinstance(msg, TelemetryMessage)
    assert msg.stream_id == "SAT-001/A-1"
    assert msg.index == 7
    assert msg.sensor_vector()[:3] == [0.0, 0.1, 0.2]


@pytest.mark.parametrize(
    ("raw", "kind", "detail"),
    [
        (None, v.INVALID_JSON, "empty"),
        (b"\xff\xfe{", v.INVALID_UTF8, "utf-8"),
        (b"not json", v.INVALID_JSON, "Expecting value"),
        (b'{"satellite_id": "SAT-001",', v.INVALID_JSON, ""),
        (b"[1, 2, 3]", v.SCHEMA, "JSON object"),
        (b'"a string"', v.SCHEMA, "JSON object"),
    ],
)
def test_unparseable(raw: bytes | None, kind: str, detail: str, fleet: Fleet, widths: dict[str, int]) -> None:
    res = v.validate_telemetry(raw, fleet, widths)
    assert isinstance(res, v.Invalid)
    assert res.kind == kind
    assert detail in res.detail
    assert res.reason.startswith(f"{kind}: ")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_rejected(
    constant: str, frame: Callable[..., dict[str, Any]], fleet: Fleet, widths: dict[str, int]
) -> None:
    # json.loads accepts NaN/Infinity and overflows 1e999 to inf: the validation must not
    text = json.dumps(frame()).replace('"sensor_3": 0.3', f'"sensor_3": {constant}')
    assert constant in text
    res = v.validate_telemetry(text.encode(), fleet, widths)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.NON_FINITE


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"satellite_id": None}, "satellite_id"),
        ({"timestamp": "2026-11-28T09:00:00"}, "timestamp"),  # no timezone
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"index": -1}, "index"),
        ({"sensors": {}}, "sensors"),
        ({"sensors": {"sensor_0": 1.0, "sensor_2": 2.0}}, "sensors"),  # gap in the keys
        ({"sensors": {"temp": 1.0}}, "sensors"),
        ({"sensors": {"sensor_0": "hot"}}, "sensors"),
        ({"ground_truth_labels": {"sensor_0": 2}}, "ground_truth_labels"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_schema_violations(
    change: dict[str, Any], field: str, frame: Callable[..., dict[str, Any]], fleet: Fleet,
    widths: dict[str, int],
) -> None:
    res = v.validate_telemetry(_dumps(frame(**change)), fleet, widths)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.SCHEMA
    assert field in res.detail


def test_missing_field(frame: Callable[..., dict[str, Any]], fleet: Fleet, widths: dict[str, int]) -> None:
    msg = frame()
    del msg["timestamp"]
    res = v.validate_telemetry(_dumps(msg), fleet, widths)
    assert isinstance(res, v.Invalid)
    assert (res.kind, "timestamp: Field required") == (v.SCHEMA, res.detail)


@pytest.mark.parametrize(
    ("sat", "entity", "detail"),
    [
        ("SAT-999", "A-1", "unknown satellite 'SAT-999'"),
        ("SAT-001", "D-1", "unknown entity 'D-1' for SAT-001"),  # D-1 exists, on another satellite
        ("SAT-001", "Z-9", "unknown entity 'Z-9'"),
    ],
)
def test_unknown_stream(
    sat: str, entity: str, detail: str, frame: Callable[..., dict[str, Any]], fleet: Fleet,
    widths: dict[str, int],
) -> None:
    res = v.validate_telemetry(_dumps(frame(satellite_id=sat, entity=entity)), fleet, widths)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.UNKNOWN_STREAM
    assert detail in res.detail


def test_wrong_sensor_count(
    frame: Callable[..., dict[str, Any]], fleet: Fleet, widths: dict[str, int]
) -> None:
    msg = frame(sensors={f"sensor_{i}": 1.0 for i in range(24)}, ground_truth_labels={})
    res = v.validate_telemetry(_dumps(msg), fleet, widths)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.SENSOR_COUNT
    assert res.detail == "A-1 has 25 sensors, message has 24"


def test_entity_widths_come_from_the_data(fleet: Fleet) -> None:
    widths = v.entity_widths(fleet, default_source())
    assert set(widths) == set(fleet.fleet_entities())
    assert set(widths.values()) == {25}


def test_dead_letter_keeps_the_raw_payload() -> None:
    inv = v.Invalid(v.INVALID_JSON, "boom")
    text = v.dead_letter(inv, raw=b"{oops", topic="t", partition=2, offset=41, key="SAT-001/A-1", service="s")
    assert (text.reason, text.raw_payload, text.payload_encoding) == ("invalid_json: boom", "{oops", "utf-8")
    assert (text.source_topic, text.partition, text.offset, text.key, text.service) == (
        "t", 2, 41, "SAT-001/A-1", "s")
    binary = v.dead_letter(inv, raw=b"\xff\x00", topic="t", partition=0, offset=0, key=None, service="s")
    assert binary.payload_encoding == "base64"
    assert base64.b64decode(binary.raw_payload) == b"\xff\x00"
    # round trip through JSON (what goes to the DLQ topic)
    assert DeadLetter.model_validate_json(binary.model_dump_json()) == binary


def _result(**overrides: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "stream_id": "SAT-001/A-1", "satellite_id": "SAT-001", "entity": "A-1", "model_name": "smap_A-1",
        "timestamp": "2026-11-28T09:00:00Z", "index": 3,
        "sensor_values": {"sensor_0": 1.0, "sensor_1": 0.0},
        "reconstruction": {"sensor_0": 0.9, "sensor_1": 0.1},
        "sensor_error": {"sensor_0": 0.1, "sensor_1": 0.1},
        "anomaly_score": 2.5, "anomaly_detected": False, "threshold": 3.0, "inference_time_ms": 1.5,
    }
    res.update(overrides)
    return res


def test_validate_result() -> None:
    ok = v.validate_result(_dumps(_result()))
    assert not isinstance(ok, v.Invalid)
    assert ok.index == 3
    cases = [
        (_dumps(_result(reconstruction={"sensor_0": 1.0})), v.SCHEMA),
        (_dumps(_result(stream_id="SAT-002/A-1")), v.SCHEMA),
        (_dumps(_result(anomaly_score=None)), v.SCHEMA),
        (json.dumps(_result()).replace("2.5", "NaN").encode(), v.NON_FINITE),
        (b"{", v.INVALID_JSON),
    ]
    for raw, kind in cases:
        res = v.validate_result(raw)
        assert isinstance(res, v.Invalid), raw
        assert res.kind == kind, (raw, res)


def test_implausible_values_are_rejected_with_the_sensor_and_range(source: Any) -> None:
    """Issue 14, hole 3: a sensor value of 1e308 is dead-lettered before it reaches any state; values of a real
    anomaly (well outside the train range, but not absurdly) pass."""
    from smap_shared.fleet import default_fleet
    from smap_shared.streaming.validation import IMPLAUSIBLE, entity_widths, sane_ranges

    fleet = default_fleet()
    ranges = sane_ranges(fleet, source)
    widths = entity_widths(fleet, source)
    test = source.load("A-1").test
    base = {"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-11-28T00:00:00Z", "index": 3}

    def frame(row: list[float]) -> bytes:
        return json.dumps({**base, "sensors": {f"sensor_{i}": v for i, v in enumerate(row)}}).encode()

    assert not isinstance(validate_telemetry(frame(list(test[3])), fleet, widths, ranges), Invalid)
    shifted = list(test[3])
    shifted[0] += 3.0  # a level shift three times the whole [-1, 1] scale: an anomaly, still plausible
    assert not isinstance(validate_telemetry(frame(shifted), fleet, widths, ranges), Invalid)
    absurd = list(test[3])
    absurd[0] = 1e308
    got = validate_telemetry(frame(absurd), fleet, widths, ranges)
    assert isinstance(got, Invalid) and got.kind == IMPLAUSIBLE
    assert "sensor_0 = 1e+308 outside the plausible range" in got.reason
    assert not isinstance(validate_telemetry(frame(absurd), fleet, widths), Invalid)  # the gate is optional
