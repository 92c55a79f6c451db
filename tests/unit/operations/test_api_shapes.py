"""Pure parts of the API: MetricsQL selectors, series alignment, response bodies, the catalog and the
OpenAPI document against the routes the app really has."""

from __future__ import annotations

import pytest

from smap_shared.fleet import default_fleet
from smap_shared.operations.api import Catalog, NotFoundError, overview_body, sensor_body, snapshot_body
from smap_shared.operations.app import make_app
from smap_shared.operations.openapi import openapi_document
from smap_shared.operations.params import TimeRange
from smap_shared.operations.vm import Series, align, parse_matrix, rollup, selector
from smap_shared.settings import OperationServerSettings

TR = TimeRange(100.0, 160.0, 30.0)
CATALOG = Catalog(default_fleet(), {e: 25 for e in default_fleet().fleet_entities()})


def s(name: str, points: dict[float, float | None], **labels: str) -> Series:
    return Series({"__name__": name, **labels}, list(points), list(points.values()))


def test_selectors_escape_label_values() -> None:
    assert selector(["a"], {"entity": "A-1"}) == '{__name__="a",entity="A-1"}'
    assert selector(["a", "b"], {"x": 'q"\\'}) == '{__name__=~"a|b",x="q\\"\\\\"}'
    expected = 'max_over_time({__name__=~"a|b"}[30000ms]) keep_metric_names'
    assert rollup("max_over_time", ["a", "b"], {}, 30_000) == expected


def test_parse_matrix_maps_non_finite_to_none() -> None:
    body = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": "a"}, "values": [[1, "0.5"], [2, "NaN"], [3, "+Inf"]]}]}}
    (series,) = parse_matrix(body)
    assert series.timestamps == [1.0, 2.0, 3.0] and series.values == [0.5, None, None]
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "b"}, "value": [5, "2"]}]}}
    assert parse_matrix(vector)[0].values == [2.0]


def test_align_takes_the_union_of_timestamps() -> None:
    stamps, cols = align({"a": s("a", {100: 1.0, 130: 2.0}), "b": s("b", {130: 3.0, 160: 4.0}), "c": None})
    assert stamps == [100, 130, 160]
    assert cols == {"a": [1.0, 2.0, None], "b": [None, 3.0, 4.0], "c": [None, None, None]}


def test_overview_body() -> None:
    series = [
        s("smap_anomaly_score", {100: 0.5, 130: 2.5, 160: 1.0}),
        s("smap_anomaly_detected", {100: 0.0, 130: 1.0, 160: 1.0}),
        s("smap_anomaly_threshold", {100: 0.7, 130: 0.75, 160: 0.8}),
        s("smap_ground_truth_anomaly", {100: 0.0, 130: 1.0, 160: 0.0}),
        s("smap_alarm_cause", {100: 0.0, 130: 1.0, 160: 1.0}, cause="value_step"),
        s("smap_alarm_cause", {100: 0.0, 130: 0.0, 160: 1.0}, cause="value_quiet"),
    ]
    body = overview_body("SAT-001", "A-1", TR, series)
    assert body["alarm_causes"] == {"error_above_threshold": [None] * 3, "error_above_train_level": [None] * 3,
                                    "value_step": [0, 1, 1], "value_quiet": [0, 0, 1]}
    assert body["timestamps"] == [100, 130, 160]
    assert body["anomaly_score"] == [0.5, 2.5, 1.0]
    assert body["detected"] == [0, 1, 1]
    assert body["detector_signal"] == [None, None, None]  # not stored (yet): nulls, not an error
    assert body["threshold"] == 0.8 and body["threshold_series"] == [0.7, 0.75, 0.8]
    assert body["ground_truth"] == [0, 1, 0]
    assert body["current"] == {"state": "anomaly", "timestamp": 160, "anomaly_score": 1.0}
    assert (body["start"], body["end"], body["step"]) == (100.0, 160.0, 30.0)
    empty = overview_body("SAT-001", "A-1", TR, [])
    assert empty["timestamps"] == [] and empty["ground_truth"] is None and empty["threshold"] is None
    assert empty["current"]["state"] == "unknown"


def test_sensor_and_snapshot_bodies() -> None:
    series = [s("smap_sensor_value", {100: 1.0}), s("smap_sensor_reconstruction", {100: 0.75}),
              s("smap_sensor_error", {100: 0.0625})]
    body = sensor_body("SAT-001", "A-1", "sensor_3", TR, series)
    assert (body["actual"], body["reconstruction"], body["error"], body["ground_truth"]) == (
        [1.0], [0.75], [0.0625], None)
    snap = snapshot_body("A-1", ["sensor_0", "sensor_1"], 200.0, [
        s("smap_sensor_error", {200: 0.5}, sensor="sensor_1"),
        s("smap_anomaly_score", {200: 190.0}),
    ])
    assert snap["timestamp"] == 190.0
    assert snap["sensors"] == [
        {"id": "sensor_0", "value": None, "reconstruction": None, "error": None},
        {"id": "sensor_1", "value": None, "reconstruction": None, "error": 0.5},
    ]


def test_catalog_lookups() -> None:
    assert CATALOG.satellite_of("D-1") == "SAT-002"
    CATALOG.check_sensor("A-1", "sensor_24")
    for entity, sensor in (("A-1", "sensor_25"), ("A-1", "sensor_x"), ("A-1", "sensor_-1")):
        with pytest.raises(NotFoundError):
            CATALOG.check_sensor(entity, sensor)
    with pytest.raises(NotFoundError, match="unknown entity"):
        CATALOG.satellite_of("A-4")  # deployed, but on no satellite of the fleet


def test_openapi_describes_exactly_the_api_routes() -> None:
    app = make_app(OperationServerSettings(), catalog=CATALOG, live_feed=False)
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
        and r.resource.canonical.startswith(("/api/", "/healthz"))
    }
    doc = openapi_document()
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert routes == described
    assert doc["openapi"].startswith("3.")
    for item in doc["paths"].values():
        for op in item.values():
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert all(p in params for p in ("entity", "sensor", "alert_id") if "{" + p + "}" in str(item))
