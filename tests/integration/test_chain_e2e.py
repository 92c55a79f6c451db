"""End to end on the real broker, RabbitMQ, Redis, Triton and VictoriaMetrics (the correctness spine).

The simulator replays 300 steps of all 9 fleet entities at full speed; every (stream, index) must reach
`smap-inference-results` with the score the offline model gives over the same sequence; VictoriaMetrics must
hold every metric with the right labels and exactly one sample per (series, timestamp); malformed telemetry
must land in the DLQ with its reason while the rest flows. Run twice: undisturbed, and with a worker shard
SIGKILLed mid-stream and restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import chromium_page
from kafka_io import produce, read_topic

from smap_shared.data import VendoredSource
from smap_shared.evaluation.metrics import Counts, event_metrics, point_counts, runs
from smap_shared.fleet import default_fleet, stream_id
from smap_shared.infra.chain import Chain, running_chain
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.rules import ALARM_CAUSES
from smap_shared.model.scorer import Scorer
from smap_shared.operations.harness import OperationServer
from smap_shared.schemas import DeadLetter, InferenceResult

pytestmark = pytest.mark.integration

START, STEPS = 4500, 300  # crosses the labelled anomalies of, P-1, G-1
STREAMS = default_fleet().streams()
ENTITIES = [e for _, e in STREAMS]
#: every metric name, with the label each of its series adds to satellite_id and entity
METRICS: dict[str, str | None] = {
    "smap_anomaly_score": None, "smap_anomaly_detected": None, "smap_anomaly_threshold": None,
    "smap_detector_signal": None, "smap_alarm_cause": "cause",
    "smap_inference_time_ms": None, "smap_ground_truth_anomaly": None,
    "smap_sensor_value": "sensor", "smap_sensor_reconstruction": "sensor", "smap_sensor_error": "sensor",
    "smap_sensor_ground_truth": "sensor",
}
BAD_MESSAGES: list[tuple[bytes, str]] = [
    (b"not json at all", "invalid_json"),
    (json.dumps({"satellite_id": "SAT-001", "entity": "A-1"}).encode(), "field required"),
    (b'{"satellite_id":"SAT-001","entity":"A-1","timestamp":"2026-11-28T00:00:00Z","index":1,'
     b'"sensors":{"sensor_0":NaN}}', "non_finite"),
    (json.dumps({"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-11-28T00:00:00Z",
                 "index": 1, "sensors": {"sensor_0": 0.5}}).encode(), "sensor_count"),
    (json.dumps({"satellite_id": "SAT-001", "entity": "Z-9", "timestamp": "2026-11-28T00:00:00Z",
                 "index": 1, "sensors": {f"sensor_{i}": 0.0 for i in range(25)}}).encode(),
     "unknown entity 'z-9'"),
]


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    with running_chain(quick_ckpt_dir, ENTITIES, tmp_path) as c:
        yield c


@pytest.fixture(scope="module")
def offline(quick_ckpt_dir: Path) -> dict[str, Scorer]:
    return {e: Scorer(Checkpoint.load(quick_ckpt_dir / f"{e}.ckpt")) for e in ENTITIES}


@pytest.mark.parametrize("kill_worker", [False, True], ids=["undisturbed", "worker-sigkill"])
def test_chain_end_to_end(chain: Chain, offline: dict[str, Scorer], kill_worker: bool) -> None:
    bootstrap = f"localhost:{chain.kafka_port}"
    total = len(STREAMS) * STEPS
    # malformed telemetry first, so the trigger meets it before the stream and must carry on past it
    asyncio.run(produce(bootstrap, "smap-telemetry", [(b"SAT-001/A-1", v) for v, _ in BAD_MESSAGES]))
    if kill_worker:
        import threading

        def killer() -> None:
            # once about a third of the results are out, SIGKILL shard 0 mid-stream and start it again
            got = asyncio.run(read_topic(bootstrap, "smap-inference-results", total // 3, 240))
            assert len(got) >= total // 3
            chain.kill("worker-shard0")
            chain.start_worker(0)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
    chain.run_simulator(START, STEPS)
    if kill_worker:
        t.join(300)
        assert "worker-shard0" in chain.procs, "the worker was never killed and restarted"

    def result_key(raw: bytes) -> tuple[str, int]:
        r = json.loads(raw)
        return (r["stream_id"], r["index"])

    raw = asyncio.run(read_topic(bootstrap, "smap-inference-results", total, 300, distinct=result_key))
    results = [InferenceResult.model_validate_json(r) for r in raw]
    by_key: dict[tuple[str, int], list[InferenceResult]] = defaultdict(list)
    for r in results:
        by_key[(r.stream_id, r.index)].append(r)
    expected = {(stream_id(s, e), START + i) for s, e in STREAMS for i in range(STEPS)}
    assert set(by_key) == expected, f"missing {len(expected - set(by_key))} (stream, index) pairs"

    # every score equals the offline model over the same sequence; redeliveries carry identical outputs
    source = VendoredSource()
    for sat, entity in STREAMS:
        seq = source.load(entity).test[START : START + STEPS]
        ref = offline[entity].run(seq)
        for i in range(STEPS):
            for r in by_key[(stream_id(sat, entity), START + i)]:
                assert r.satellite_id == sat and r.entity == entity
                assert abs(r.anomaly_score - ref.anomaly_score[i]) <= 1e-6, (entity, i)
                np.testing.assert_allclose(
                    [r.reconstruction[f"sensor_{j}"] for j in range(seq.shape[1])], ref.reconstruction[i],
                    atol=1e-6, rtol=0)
                np.testing.assert_allclose(
                    [r.sensor_error[f"sensor_{j}"] for j in range(seq.shape[1])], ref.sensor_error[i],
                    atol=1e-6, rtol=0)
                assert r.anomaly_detected == bool(ref.anomaly_detected[i])
                assert r.threshold == pytest.approx(ref.threshold[i], abs=1e-9)
                assert r.detector_signal == pytest.approx(ref.detector_signal[i], abs=1e-9)
                assert r.alarm_cause == int(ref.alarm_cause[i])
                assert r.sensor_values == {f"sensor_{j}": float(seq[i, j]) for j in range(seq.shape[1])}
                label = int(any(START + i in iv for iv in source.load(entity).labels))
                assert set(r.ground_truth_labels.values()) == {label}

    # the DLQ holds every malformed message with a reason, and the stream went on (checked above)
    dlq = [DeadLetter.model_validate_json(m) for m in asyncio.run(
        read_topic(bootstrap, "smap-telemetry-dlq", len(BAD_MESSAGES), 60))]
    assert len(dlq) == len(BAD_MESSAGES)
    for letter, (payload, hint) in zip(sorted(dlq, key=lambda d: d.offset), BAD_MESSAGES, strict=True):
        assert letter.raw_payload.encode() == payload
        assert hint in letter.reason.lower(), (hint, letter.reason)

    # VictoriaMetrics: every metric, right labels, exactly one sample per (series, timestamp)
    seen: list[int] = [0]

    def all_in_vm() -> bool:
        series = chain.vm_export('{__name__="smap_anomaly_score"}')
        seen[0] = sum(len(s["values"]) for s in series)
        return seen[0] >= total

    try:
        chain.wait_for(all_in_vm, 240, "VictoriaMetrics to hold every anomaly score")
    except TimeoutError as exc:
        raise AssertionError(f"VictoriaMetrics holds {seen[0]} of {total} anomaly scores") from exc
    per_stream = {"sensor": lambda e: offline[e].n_sensors, "cause": lambda e: len(ALARM_CAUSES)}
    for name, extra in METRICS.items():
        series = chain.vm_export(f'{{__name__="{name}"}}')
        labels = {tuple(sorted(s["metric"].items())) for s in series}
        expected_series = sum(per_stream[extra](e) if extra else 1 for e in ENTITIES)
        assert len(labels) == len(series) == expected_series, name
        for s in series:
            metric = s["metric"]
            assert isinstance(metric, dict)
            keys = {"__name__", "satellite_id", "entity"} | ({extra} if extra else set())
            assert set(metric) == keys, (name, metric)
            assert (metric["satellite_id"], metric["entity"]) in STREAMS
            stamps = s["timestamps"]
            assert isinstance(stamps, list)
            assert len(stamps) == len(set(stamps)) == STEPS, (name, metric, len(stamps))
    scores = {
        (s["metric"]["entity"], t): v
        for s in chain.vm_export('{__name__="smap_anomaly_score"}')
        for t, v in zip(s["timestamps"], s["values"], strict=True)
    }
    for r in results:
        ts = int(r.timestamp.timestamp() * 1000)
        assert scores[(r.entity, ts)] == pytest.approx(r.anomaly_score, abs=1e-9)

    if kill_worker:
        return
    # Performance per entity (the dashboard's view, GET /api/smap/performance) equals the offline evaluation's
    # metrics on the same frames: event level, point-wise and delays, from the evaluation's own functions
    server = OperationServer(chain.workdir / "os", chain.vm_url()).start()
    try:
        with urllib.request.urlopen(f"{server.url}/api/smap/performance?window=1h", timeout=60) as resp:
            perf = json.loads(resp.read())
        offline_total = {"event": Counts(0, 0, 0), "point": Counts(0, 0, 0)}
        for sat, entity in STREAMS:
            data = source.load(entity)
            seq = data.test[START : START + STEPS]
            ref = offline[entity].run(seq)
            truth = data.test_mask()[START : START + STEPS]
            ev = event_metrics(ref.anomaly_detected, runs(truth))
            point = point_counts(ref.anomaly_detected, truth)
            got = perf["entities"][entity]
            assert got["frames"] == STEPS and got["segments"] == len(runs(truth)), entity
            assert got["event"] == ev.counts.as_dict() and got["point"] == point.as_dict(), entity
            delays = [d for d in ev.delays if d is not None]
            assert got["delay"]["detected"] == len(delays)
            assert got["delay"]["mean_frames"] == (pytest.approx(np.mean(delays)) if delays else None)
            assert perf["satellites"][sat]["streams"] == 3
            offline_total = {"event": offline_total["event"] + ev.counts, "point": offline_total["point"] + point}
        assert perf["fleet"]["event"] == offline_total["event"].as_dict()
        assert perf["fleet"]["point"] == offline_total["point"].as_dict()
        assert perf["verdicts_source"] == "unavailable"  # no alert manager in this chain
        # the same numbers on the page
        with chromium_page({"width": 1500, "height": 900}) as (page, errors):
            page.goto(server.url + "/#performance")
            page.select_option("#performance-window", "1h")
            page.wait_for_selector('#performance-table tr[data-name="fleet"]')
            fleet_row = page.inner_text('#performance-table tr[data-name="fleet"]')
            e = perf["fleet"]["event"]
            assert f"{e['tp']} / {e['fp']} / {e['fn']}" in fleet_row and f"{e['f1']:.3f}" in fleet_row
            assert page.locator("#performance-table tbody tr").count() == len(ENTITIES) + 1
            page.screenshot(path=str(chain.workdir / "performance.png"), full_page=True)
            if os.environ.get("SMAP_PERFORMANCE_SCREENSHOT"):
                shutil.copy(chain.workdir / "performance.png", os.environ["SMAP_PERFORMANCE_SCREENSHOT"])
        assert errors == []
    finally:
        server.stop()
