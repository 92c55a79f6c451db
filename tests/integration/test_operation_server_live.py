"""The WebSocket live stream on the real chain: the simulator's frames go through the trigger, the workers
and Triton to `smap-inference-results`; the operation server (its real entry point, as a subprocess) must
push every result to every subscribed socket with the spec's fields and the topic's numbers, honour each
socket's subscription (query string or a subscribe message), and forward alert events from `smap-alerts`
with the same filter."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kafka_io import produce, read_topic

from smap_shared.infra.chain import Chain, running_chain
from smap_shared.operations.harness import OperationServer
from smap_shared.schemas import AlertEvent, InferenceResult

pytestmark = pytest.mark.integration

ENTITIES = ["A-1", "A-2", "D-1"]  # two streams of SAT-001, one of SAT-002
SATELLITE = {"A-1": "SAT-001", "A-2": "SAT-001", "D-1": "SAT-002"}
START, STEPS = 4500, 40


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    with running_chain(quick_ckpt_dir, ENTITIES, tmp_path, redis_db=10) as c:
        yield c


@pytest.fixture
def server(chain: Chain, tmp_path: Path) -> Iterator[OperationServer]:
    srv = OperationServer(tmp_path / "os", chain.vm_url(), kafka_bootstrap=f"localhost:{chain.kafka_port}")
    try:
        yield srv.start(wait_feed=True)
    finally:
        srv.stop()


def alert(alert_id: int, satellite_id: str, entity: str) -> bytes:
    at = datetime.now(UTC)
    return AlertEvent(event="firing", alert_id=alert_id, rule="score_high", severity="critical", state="firing",
                      satellite_id=satellite_id, entity=entity, stream_id=f"{satellite_id}/{entity}", score=5.0,
                      started_at=at, at=at).model_dump_json().encode()


async def session(chain: Chain, server: OperationServer) -> dict[str, list[dict[str, Any]]]:
    ws_url = server.url.replace("http", "ws") + "/ws/smap"
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    want = {"all": len(ENTITIES) * STEPS, "sat1": 2 * STEPS, "d1": STEPS, "sat2-by-message": STEPS}
    async with aiohttp.ClientSession() as http:
        # an unknown subscription is refused before the upgrade
        async with http.get(f"{server.url}/ws/smap?entity=Z-9") as resp:
            assert resp.status == 404 and "unknown entity" in (await resp.json())["error"]
        sockets = {
            "all": await http.ws_connect(ws_url),
            "sat1": await http.ws_connect(f"{ws_url}?satellite_id=SAT-001"),
            "d1": await http.ws_connect(f"{ws_url}?satellite_id=SAT-002&entity=D-1"),
            "sat2-by-message": await http.ws_connect(ws_url),
        }
        for name, ws in sockets.items():
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "subscribed", (name, hello)
        ws = sockets["sat2-by-message"]
        await ws.send_json({"type": "subscribe", "entity": "Z-9"})
        assert (await ws.receive_json(timeout=10))["type"] == "error"
        await ws.send_json({"type": "subscribe", "satellite_id": "SAT-002"})
        ack = await ws.receive_json(timeout=10)
        assert ack == {"type": "subscribed", "satellite_id": "SAT-002", "entity": None}

        async def collect(name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            keys: set[tuple[str, int]] = set()
            alerts = 0
            while len(keys) < want[name] or (name != "d1" and alerts < 1):
                msg = await ws.receive_json()
                got[name].append(msg)
                if msg["type"] == "smap_inference":
                    keys.add((msg["entity"], msg["index"]))
                elif msg["type"] == "smap_alert":
                    alerts += 1

        tasks = [asyncio.create_task(collect(n, w)) for n, w in sockets.items()]
        bootstrap = f"localhost:{chain.kafka_port}"
        await produce(bootstrap, "smap-alerts", [(b"SAT-001/A-2", alert(1, "SAT-001", "A-2")),
                                                 (b"SAT-002/E-1", alert(2, "SAT-002", "E-1"))])
        await asyncio.to_thread(chain.run_simulator, START, STEPS)
        done, pending = await asyncio.wait(tasks, timeout=240)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()
        assert not pending, {n: len(v) for n, v in got.items()}
        await asyncio.sleep(1.0)  # anything a filter should have kept out would have arrived by now
        for name, ws in sockets.items():
            while True:
                try:
                    got[name].append(await ws.receive_json(timeout=0.2))
                except TimeoutError:
                    break
            await ws.close()
    return got


def test_results_reach_subscribed_sockets(chain: Chain, server: OperationServer) -> None:
    got = asyncio.run(session(chain, server))
    raw = asyncio.run(read_topic(f"localhost:{chain.kafka_port}", "smap-inference-results", len(ENTITIES) * STEPS,
                                 60, distinct=lambda v: (json.loads(v)["entity"], json.loads(v)["index"])))
    topic = {(r.entity, r.index): r for r in (InferenceResult.model_validate_json(v) for v in raw)}
    assert len(topic) == len(ENTITIES) * STEPS

    results = {name: [m for m in msgs if m["type"] == "smap_inference"] for name, msgs in got.items()}
    keys = {name: {(m["entity"], m["index"]) for m in msgs} for name, msgs in results.items()}
    assert keys["all"] == set(topic)
    assert keys["sat1"] == {k for k in topic if k[0] in ("A-1", "A-2")}
    assert keys["d1"] == {k for k in topic if k[0] == "D-1"}
    assert keys["sat2-by-message"] == keys["d1"]

    for m in results["all"]:
        r = topic[(m["entity"], m["index"])]
        assert set(m) >= {"type", "satellite_id", "entity", "timestamp", "anomaly_score", "anomaly_detected",
                          "sensors"}
        assert m["satellite_id"] == SATELLITE[m["entity"]] == r.satellite_id
        assert datetime.fromisoformat(m["timestamp"]) == r.timestamp
        assert m["anomaly_score"] == r.anomaly_score and m["anomaly_detected"] == r.anomaly_detected
        assert m["threshold"] == r.threshold
        assert [s["id"] for s in m["sensors"]] == [f"sensor_{i}" for i in range(len(r.sensor_values))]
        for s in m["sensors"]:
            assert (s["value"], s["reconstruction"], s["error"]) == (
                r.sensor_values[s["id"]], r.reconstruction[s["id"]], r.sensor_error[s["id"]])
            assert s["ground_truth"] == r.ground_truth_labels[s["id"]]

    # (the two alerts' keys may land on different partitions: no order between them)
    alerts = {name: sorted((m["alert_id"], m["entity"]) for m in msgs if m["type"] == "smap_alert")
              for name, msgs in got.items()}
    assert alerts == {"all": [(1, "A-2"), (2, "E-1")], "sat1": [(1, "A-2")], "d1": [],
                      "sat2-by-message": [(2, "E-1")]}
    assert "Traceback" not in (server.workdir / "operation-server.log").read_text()
