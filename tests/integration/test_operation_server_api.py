"""The operation server's REST API against a real, private VictoriaMetrics holding imported series with known
values: exact numbers back, the aggregation at a coarser step, every error case (400, 404, 503 with
VictoriaMetrics stopped), the alert manager proxy, the OpenAPI document and the page's static files."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from http_fakes import JsonHandler

from smap_shared.infra.ports import free_port
from smap_shared.operations.harness import OperationServer, Victoria

pytestmark = pytest.mark.integration

N = 120  # one hour at the real SMAP cadence
STEP = 30
NOW = int(time.time())
T_LAST = NOW // STEP * STEP - 60  # a minute ago: "current" for the satellites' status
T0 = T_LAST - STEP * (N - 1)
SENSORS = 25


def score(i: int) -> float:
    return 0.25 * i


def detected(i: int) -> int:
    return int(10 <= i < 15)


def truth(i: int) -> int:
    return int(12 <= i < 20)


def step_cause(i: int) -> int:
    """value_step behind the alarm at its first two frames, error_above_threshold after (0 without alarm)."""
    return int(detected(i) == 1 and i < 12)


def signal(i: int) -> float:
    return 0.125 * i


def threshold(i: int) -> float:
    return 1.5 if i < 60 else 1.75


def value(s: int, i: int) -> float:
    return s + 0.5 * i


def recon(s: int, i: int) -> float:
    return s + 0.25 * i


def error(s: int, i: int) -> float:
    return (value(s, i) - recon(s, i)) ** 2  # exact: multiples of 1/16


def lines() -> list[str]:
    out = []
    for i in range(N):
        ts = (T0 + STEP * i) * 1000
        a1 = 'satellite_id="SAT-001",entity="A-1"'
        out += [
            f"smap_anomaly_score{{{a1}}} {score(i)} {ts}",
            f"smap_anomaly_detected{{{a1}}} {detected(i)} {ts}",
            f"smap_anomaly_threshold{{{a1}}} {threshold(i)} {ts}",
            f"smap_detector_signal{{{a1}}} {signal(i)} {ts}",
            f"smap_ground_truth_anomaly{{{a1}}} {truth(i)} {ts}",
            f'smap_alarm_cause{{{a1},cause="value_step"}} {step_cause(i)} {ts}',
            f'smap_alarm_cause{{{a1},cause="error_above_threshold"}} {detected(i) - step_cause(i)} {ts}',
            # A-2 on the same satellite: anomalous at its latest frame; no detector signal stored
            f'smap_anomaly_score{{satellite_id="SAT-001",entity="A-2"}} 9 {ts}',
            f'smap_anomaly_detected{{satellite_id="SAT-001",entity="A-2"}} 1 {ts}',
        ]
        for s in range(SENSORS):
            lab = f'{a1},sensor="sensor_{s}"'
            out += [
                f"smap_sensor_value{{{lab}}} {value(s, i)} {ts}",
                f"smap_sensor_reconstruction{{{lab}}} {recon(s, i)} {ts}",
                f"smap_sensor_error{{{lab}}} {error(s, i)} {ts}",
                f"smap_sensor_ground_truth{{{lab}}} {truth(i)} {ts}",
            ]
    return out


class FakeAlertManager(JsonHandler):
    """Stands in for the alert manager's HTTP API (helper B's service): canned answers, recorded acks."""

    acks: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/api/smap/alerts?") or self.path == "/api/smap/alerts":
            self.reply(200, {"alerts": [{"id": 7, "rule": "score_high", "state": "firing"}], "query": self.path})
        elif self.path == "/api/smap/alerts/7":
            self.reply(200, {"id": 7, "rule": "score_high", "state": "firing"})
        else:
            self.reply(404, {"error": "no such alert"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        FakeAlertManager.acks.append((self.path, json.loads(self.rfile.read(length))))
        self.reply(200, {"id": 7, "acknowledged_by": "ops"})


@pytest.fixture(scope="module")
def alert_manager() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeAlertManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    v = Victoria(tmp_path_factory.mktemp("vm")).start()
    try:
        v.import_lines(lines())
        yield v
    finally:
        v.stop()


@pytest.fixture(scope="module")
def server(vm: Victoria, alert_manager: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = OperationServer(tmp_path_factory.mktemp("os"), vm.url, alert_manager_url=alert_manager).start()
    try:
        yield srv.url
    finally:
        srv.stop()


def call(url: str, data: bytes | None = None) -> tuple[int, Any, str]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, json.loads(raw) if "json" in ctype else raw.decode(), ctype
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw), exc.headers.get("Content-Type", "")


def rng(start: int = T0, end: int = T_LAST, step: str = "30s") -> str:
    return f"start={start}&end={end}&step={step}"


def test_overview_returns_the_stored_numbers(server: str) -> None:
    status, body, _ = call(f"{server}/api/smap/entity/A-1/overview?{rng()}")
    assert status == 200
    assert body["timestamps"] == [T0 + STEP * i for i in range(N)]
    assert body["anomaly_score"] == [score(i) for i in range(N)]
    assert body["detected"] == [detected(i) for i in range(N)]
    assert body["detector_signal"] == [signal(i) for i in range(N)]
    assert body["threshold_series"] == [threshold(i) for i in range(N)]
    assert body["threshold"] == 1.75
    assert body["ground_truth"] == [truth(i) for i in range(N)]
    causes = body["alarm_causes"]
    assert causes["value_step"] == [step_cause(i) for i in range(N)]
    assert causes["error_above_threshold"] == [detected(i) - step_cause(i) for i in range(N)]
    assert causes["value_quiet"] == causes["error_above_train_level"] == [None] * N  # never stored
    assert body["current"] == {"state": "normal", "timestamp": T_LAST, "anomaly_score": score(N - 1)}
    assert (body["satellite_id"], body["entity"], body["step"]) == ("SAT-001", "A-1", 30.0)


def test_a_coarser_step_keeps_peaks_and_latest_values(server: str) -> None:
    # each point covers (t - 60 s, t]: two samples; scores and flags take the max, the threshold the last
    status, body, _ = call(f"{server}/api/smap/entity/A-1/overview?{rng(T0 + 60, T_LAST, '60s')}")
    assert status == 200
    idx = list(range(2, N, 2))
    assert body["timestamps"] == [T0 + STEP * i for i in idx]
    assert body["anomaly_score"] == [score(i) for i in idx]
    assert body["detected"] == [max(detected(i - 1), detected(i)) for i in idx]
    assert body["threshold_series"] == [threshold(i) for i in idx]
    # 10..14 detected: the point at 10 covers 9 and 10, the point at 16 covers 15 and 16
    assert [t for t, d in zip(body["timestamps"], body["detected"], strict=True) if d] == [
        T0 + STEP * i for i in (10, 12, 14)]


def test_an_entity_without_detector_signal_gets_nulls(server: str) -> None:
    status, body, _ = call(f"{server}/api/smap/entity/A-2/overview?{rng()}")
    assert status == 200
    assert body["anomaly_score"] == [9.0] * N
    assert body["detector_signal"] == [None] * N
    assert body["ground_truth"] is None and body["threshold"] is None
    assert body["current"]["state"] == "anomaly"


def test_sensor_history_returns_the_stored_numbers(server: str) -> None:
    status, body, _ = call(f"{server}/api/smap/entity/A-1/sensor/sensor_3?{rng()}")
    assert status == 200
    assert body["timestamps"] == [T0 + STEP * i for i in range(N)]
    assert body["actual"] == [value(3, i) for i in range(N)]
    assert body["reconstruction"] == [recon(3, i) for i in range(N)]
    assert body["error"] == [error(3, i) for i in range(N)]
    assert body["ground_truth"] == [truth(i) for i in range(N)]


def test_sensor_snapshot_is_the_latest_frame(server: str) -> None:
    status, body, _ = call(f"{server}/api/smap/entity/A-1/sensors?time={T_LAST}")
    assert status == 200
    assert body["timestamp"] == T_LAST
    assert body["sensors"] == [
        {"id": f"sensor_{s}", "value": value(s, N - 1), "reconstruction": recon(s, N - 1),
         "error": error(s, N - 1)} for s in range(SENSORS)
    ]


def test_satellites_carry_the_current_state(server: str) -> None:
    # the latest frame counts as current within the lookback (default 10 min; here stretched by the time
    # this module waited for earlier tests since the data was stamped)
    status, body, _ = call(f"{server}/api/smap/satellites?lookback={int(time.time()) - T_LAST + 300}s")
    assert status == 200
    assert [(s["id"], s["entities"]) for s in body] == [
        ("SAT-001", ["A-1", "A-2", "A-3"]), ("SAT-002", ["D-1", "D-2", "E-1"]), ("SAT-003", ["P-1", "P-2", "G-1"])]
    st = body[0]["status"]
    assert st["A-1"] == {"state": "normal", "anomaly_score": score(N - 1), "timestamp": T_LAST}
    assert st["A-2"] == {"state": "anomaly", "anomaly_score": 9.0, "timestamp": T_LAST}
    assert st["A-3"] == {"state": "unknown", "anomaly_score": None, "timestamp": None}


@pytest.mark.parametrize(("path", "status", "fragment"), [
    ("/api/smap/entity/Z-9/overview", 404, "unknown entity 'Z-9'"),
    ("/api/smap/entity/A-4/overview", 404, "unknown entity"),  # deployed, on no satellite
    ("/api/smap/entity/A-1/sensor/sensor_25", 404, "unknown sensor"),
    ("/api/smap/entity/A-1/sensor/temperature", 404, "unknown sensor"),
    ("/api/smap/entity/Z-9/sensor/sensor_0", 404, "unknown entity"),
    ("/api/smap/entity/Z-9/sensors", 404, "unknown entity"),
    ("/api/smap/nothing-here", 404, "Not Found"),
    (f"/api/smap/entity/A-1/overview?start={T_LAST}&end={T0}", 400, "end must be after start"),
    ("/api/smap/entity/A-1/overview?step=0s", 400, "step"),
    ("/api/smap/entity/A-1/overview?step=soon", 400, "step"),
    ("/api/smap/entity/A-1/overview?window=24h&step=1s", 400, "at most 11000"),
    ("/api/smap/entity/A-1/overview?window=60d", 400, "31 days"),
    ("/api/smap/entity/A-1/sensor/sensor_0?start=yesterday", 400, "start"),
    ("/api/smap/alerts/abc", 400, "integer"),
])
def test_errors_are_json(server: str, path: str, status: int, fragment: str) -> None:
    got, body, ctype = call(server + path)
    assert got == status
    assert "application/json" in ctype
    assert body["status"] == status and fragment in body["error"]


def test_alert_manager_proxy(server: str) -> None:
    status, body, _ = call(f"{server}/api/smap/alerts?state=firing")
    assert status == 200 and body["alerts"][0]["id"] == 7 and body["query"] == "/api/smap/alerts?state=firing"
    assert call(f"{server}/api/smap/alerts/7")[1] == {"id": 7, "rule": "score_high", "state": "firing"}
    assert call(f"{server}/api/smap/alerts/8")[:2] == (404, {"error": "no such alert"})
    status, body, _ = call(f"{server}/api/smap/alerts/7/ack", json.dumps({"note": "seen"}).encode())
    assert (status, body) == (200, {"id": 7, "acknowledged_by": "ops"})
    assert FakeAlertManager.acks[-1] == ("/api/smap/alerts/7/ack", {"note": "seen"})


def test_openapi_page_and_chart_library_are_served(server: str) -> None:
    status, doc, _ = call(f"{server}/api/openapi.json")
    assert status == 200 and "/api/smap/entity/{entity}/overview" in doc["paths"]
    status, html, ctype = call(f"{server}/")
    assert status == 200 and "text/html" in ctype and "/vendor/uplot/uPlot.iife.min.js" in html
    for path in ("/vendor/uplot/uPlot.iife.min.js", "/vendor/uplot/uPlot.min.css", "/static/lib.js",
                 "/static/app.js"):
        with urllib.request.urlopen(server + path, timeout=10) as resp:
            assert resp.status == 200 and len(resp.read()) > 1000, path


def test_alert_manager_away_is_503(vm: Victoria, tmp_path: Path) -> None:
    srv = OperationServer(tmp_path, vm.url, alert_manager_url=f"http://127.0.0.1:{free_port()}").start()
    try:
        for path, data in (("/api/smap/alerts", None), ("/api/smap/alerts/1", None),
                           ("/api/smap/alerts/1/ack", b"{}")):
            status, body, _ = call(srv.url + path, data)
            assert (status, body) == (503, {"error": "alert manager unavailable", "status": 503})
    finally:
        srv.stop()


def test_victoria_down_is_503_never_a_trace(tmp_path: Path) -> None:
    vm = Victoria(tmp_path / "vm").start()
    srv = OperationServer(tmp_path / "os", vm.url).start()
    try:
        assert call(f"{srv.url}/api/smap/entity/A-1/overview")[0] == 200
        vm.stop()
        for path in ("/api/smap/entity/A-1/overview", "/api/smap/entity/A-1/sensor/sensor_0",
                     "/api/smap/entity/A-1/sensors"):
            status, body, _ = call(srv.url + path)
            assert (status, body) == (503, {"error": "VictoriaMetrics unavailable", "status": 503}), path
        # the fleet still lists, with every state unknown, and the validation still answers first
        status, body, _ = call(f"{srv.url}/api/smap/satellites")
        assert status == 200 and {st["state"] for s in body for st in s["status"].values()} == {"unknown"}
        assert call(f"{srv.url}/api/smap/entity/Z-9/overview")[0] == 404
        assert call(f"{srv.url}/api/smap/entity/A-1/overview?step=0s")[0] == 400
        assert call(f"{srv.url}/healthz")[1]["victoria"] == "unavailable"
        log = (tmp_path / "os" / "operation-server.log").read_text()
        assert "Traceback" not in log
    finally:
        srv.stop()
        vm.stop()


def test_answers_match_the_served_openapi_schemas(server: str) -> None:
    from jsonschema import Draft202012Validator

    doc = call(f"{server}/api/openapi.json")[1]
    checks = {
        "Overview": f"/api/smap/entity/A-1/overview?{rng()}",
        "SensorHistory": f"/api/smap/entity/A-1/sensor/sensor_3?{rng()}",
        "Snapshot": f"/api/smap/entity/A-1/sensors?time={T_LAST}",
        "Error": "/api/smap/entity/Z-9/overview",
    }
    for name, path in checks.items():
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        Draft202012Validator.check_schema(schema)
        validator = Draft202012Validator(schema)
        body = call(server + path)[1]
        assert list(validator.iter_errors(body)) == [], name
        assert list(validator.iter_errors({"timestamps": "not a list", "error": 5})) != [], name
    sats = {"type": "array", "items": {"$ref": "#/components/schemas/Satellite"}, "components": doc["components"]}
    assert list(Draft202012Validator(sats).iter_errors(call(f"{server}/api/smap/satellites")[1])) == []
