"""HTTP ingest (POST /api/smap/telemetry) on the real chain: frames posted by an HTTP client -- built by the
simulator's own frame function from A-1's test split -- are scored exactly like the offline model over the
same sequence; invalid frames in a batch are answered per frame with the trigger's reason and dead-lettered
while the valid ones around them go through; a body that is no batch, or too big, is refused whole; and with
the broker away the answer is 503 with Retry-After (nothing is claimed written)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_io import read_topic

from smap_shared.data import VendoredSource
from smap_shared.infra.chain import REPO_ROOT, Chain, running_chain
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer
from smap_shared.operations.harness import OperationServer
from smap_shared.operations.ingest import MAX_INGEST_BYTES
from smap_shared.schemas import DeadLetter, InferenceResult
from smap_shared.streaming.simulator import StreamReplay

pytestmark = pytest.mark.integration

START, STEPS, BATCH, CSV_ROWS = 4600, 120, 40, 30
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def post(url: str, body: bytes) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers


def frames() -> list[dict[str, Any]]:
    data = VendoredSource().load("A-1")
    replay = StreamReplay("SAT-001", "A-1", data.test, data.test_mask())
    return [replay.frame(START + i, T0 + timedelta(seconds=i)).model_dump(mode="json") for i in range(STEPS)]


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    with running_chain(quick_ckpt_dir, ["A-1"], tmp_path, redis_db=9) as c:
        yield c


def test_frames_posted_over_http_are_scored_like_the_simulators(chain: Chain, tmp_path: Path,
                                                               quick_ckpt_dir: Path) -> None:
    bootstrap = f"localhost:{chain.kafka_port}"
    server = OperationServer(tmp_path / "os", chain.vm_url(), kafka_bootstrap=bootstrap).start()
    url = f"{server.url}/api/smap/telemetry"
    try:
        good = frames()
        bad = [{**good[0], "entity": "Z-9"}, {**good[0], "sensors": {"sensor_0": 0.5}},
               {**good[0], "sensors": {**good[0]["sensors"], "sensor_0": "high"}}, "not a frame"]
        batches = [good[i : i + BATCH] for i in range(0, STEPS, BATCH)]
        # the second batch carries the invalid frames in its middle; the first is a bare array
        status, body, _ = post(url, json.dumps(batches[0]).encode())
        assert status == 200 and body["accepted"] == BATCH and body["rejected"] == 0
        mixed = batches[1][:20] + bad + batches[1][20:]
        status, body, _ = post(url, json.dumps({"frames": mixed}).encode())
        assert status == 422 and body["accepted"] == BATCH and body["rejected"] == len(bad)
        rejected = [f for f in body["frames"] if f["status"] == "rejected"]
        assert [f["position"] for f in rejected] == [20, 21, 22, 23]
        kinds = [f["reason"].split(":")[0] for f in rejected]
        assert kinds == ["unknown_stream", "sensor_count", "schema", "schema"]
        assert "unknown entity 'Z-9'" in rejected[0]["reason"] and rejected[3]["stream_id"] is None
        status, body, _ = post(url, json.dumps({"frames": batches[2]}).encode())
        assert status == 200 and body["accepted"] == BATCH
        # refused whole, nothing written
        for raw, fragment in ((b"{not json", "strict JSON"), (b'{"frame": []}', "frames"), (b"[]", "no frames"),
                              (json.dumps([good[0]] * 5001).encode(), "at most 5000")):
            status, body, _ = post(url, raw)
            assert status == 400 and fragment in body["error"], (raw[:20], body)
        status, body, _ = post(url, b"[" + b" " * MAX_INGEST_BYTES + b"]")
        assert status == 413 and body["status"] == 413

        # the worked example (docs/ingest.md): a CSV export fed by scripts/feed_csv.py, the next 30 frames
        csv_path = tmp_path / "a1.csv"
        after = VendoredSource().load("A-1").test[START + STEPS : START + STEPS + CSV_ROWS]
        csv_path.write_text("timestamp," + ",".join(f"s{j}" for j in range(after.shape[1])) + "\n" + "".join(
            f"{(T0 + timedelta(seconds=STEPS + i)).isoformat()}," + ",".join(repr(float(v)) for v in row) + "\n"
            for i, row in enumerate(after)))
        fed = subprocess.run([sys.executable, "scripts/feed_csv.py", str(csv_path), "--satellite", "SAT-001",
                              "--entity", "A-1", "--url", server.url, "--start-index", str(START + STEPS),
                              "--batch", "8"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                             check=False)
        assert fed.returncode == 0 and f"{CSV_ROWS} frames accepted, 0 rejected" in fed.stdout, fed.stderr
        total = STEPS + CSV_ROWS

        # every posted frame scored, equal to the offline model over the same sequence
        def key(raw: bytes) -> tuple[str, int]:
            r = json.loads(raw)
            return (r["stream_id"], r["index"])

        values = asyncio.run(read_topic(bootstrap, "smap-inference-results", total, 240, distinct=key))
        results = {(r.stream_id, r.index): r for r in (InferenceResult.model_validate_json(x) for x in values)}
        assert set(results) == {("SAT-001/A-1", START + i) for i in range(total)}
        seq = VendoredSource().load("A-1").test[START : START + total]
        ref = Scorer(Checkpoint.load(quick_ckpt_dir / "A-1.ckpt")).run(seq)
        for i in range(total):
            r = results[("SAT-001/A-1", START + i)]
            assert abs(r.anomaly_score - ref.anomaly_score[i]) <= 1e-6, i
            np.testing.assert_allclose([r.sensor_error[f"sensor_{j}"] for j in range(seq.shape[1])],
                                       ref.sensor_error[i], atol=1e-6, rtol=0)
            assert r.anomaly_detected == bool(ref.anomaly_detected[i])
            assert r.detector_signal == pytest.approx(ref.detector_signal[i], abs=1e-9)
            assert r.timestamp == T0 + timedelta(seconds=i)
        # the rejected frames are in the DLQ with their reasons, marked as having come over HTTP
        letters = [DeadLetter.model_validate_json(m) for m in asyncio.run(
            read_topic(bootstrap, "smap-telemetry-dlq", len(bad), 60))]
        assert sorted((d.source_topic, d.offset, d.reason.split(":")[0]) for d in letters) == [
            ("http", 20, "unknown_stream"), ("http", 21, "sensor_count"), ("http", 22, "schema"),
            ("http", 23, "schema")]
        assert json.loads(next(d for d in letters if d.offset == 20).raw_payload)["entity"] == "Z-9"
    finally:
        server.stop()


def test_without_the_broker_the_answer_is_503_and_retry(tmp_path: Path) -> None:
    server = OperationServer(tmp_path / "os", "http://127.0.0.1:1").start()  # nothing listens on the broker
    try:
        status, body, headers = post(f"{server.url}/api/smap/telemetry", json.dumps(frames()[:3]).encode())
        assert status == 503 and body["retry"] is True and headers["Retry-After"] == "5"
        assert "broker" in body["error"]
    finally:
        server.stop()
