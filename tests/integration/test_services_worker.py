"""The analysis worker as it is started in production (the celery command line, one-thread pool, shard 0),
against RabbitMQ (a throwaway vhost), Tansu, and a stand-in for Triton that speaks the KServe v2 HTTP
protocol (the real OmniAnomaly models are exercised by the end-to-end test).

Checked: tasks published by the trigger's Celery app reach the worker; the tritonclient request carries
the values, stream id and index; results reach Kafka in order; a transient model error is retried in
place; a permanent one ('expects') fails the task without retry; the shard's metrics endpoint counts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import urllib.request
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from http_fakes import JsonHandler
from kafka_io import read_topic
from kombu.connection import Connection

from smap_shared.routing import queue_name
from smap_shared.schemas import InferenceResult, InferenceTask, utc_now
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.celery_app import make_celery_app
from smap_shared.streaming.trigger import CeleryPublisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "localhost:9092"
N = 25


class FakeTriton(JsonHandler):
    """POST /v2/models/<model>/infer: index 1 -> 400 'expects' (permanent); index 2 -> 503 once."""

    calls: ClassVar[list[tuple[str, list[float], str, int]]] = []
    failed_once: ClassVar[set[int]] = set()

    def do_POST(self) -> None:
        model = self.path.split("/")[3]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_len = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request = json.loads(body[:header_len])
        tensors: dict[str, bytes] = {}
        pos = header_len
        for inp in request["inputs"]:
            size = inp["parameters"]["binary_data_size"]
            tensors[inp["name"]] = body[pos:pos + size]
            pos += size
        values = np.frombuffer(tensors["input_data"], dtype=np.float64)
        (sid_len,) = struct.unpack("<I", tensors["stream_id"][:4])
        stream_id = tensors["stream_id"][4:4 + sid_len].decode()
        index = int(np.frombuffer(tensors["sequence_index"], dtype=np.int64)[0])
        FakeTriton.calls.append((model, values.tolist(), stream_id, index))
        if index == 1:
            self.reply(400, {"error": f"input 'input_data' expects [{N}] values"})
            return
        if index == 2 and index not in FakeTriton.failed_once:
            FakeTriton.failed_once.add(index)
            self.reply(503, {"error": f"model '{model}' is not ready"})
            return
        recon = values * 0.5

        def out(name: str, dtype: str, data: list[Any]) -> dict[str, Any]:
            return {"name": name, "datatype": dtype, "shape": [len(data)], "data": data}

        self.reply(200, {"model_name": model, "outputs": [
            out("reconstruction", "FP64", recon.tolist()),
            out("anomaly_score", "FP64", [index + 0.5]),
            out("anomaly_detected", "BOOL", [index % 2 == 0]),
            out("sensor_error", "FP64", ((values - recon) ** 2).tolist()),
            out("threshold", "FP64", [1.5]),
            out("detector_signal", "FP64", [index + 0.25]),
            out("alarm_cause", "INT64", [8 if index % 2 == 0 else 0]),
            out("duplicate", "BOOL", [False]),
            out("gap", "INT64", [0]),
        ]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(url: str) -> Any:
    return Connection(url)  # type: ignore[no-untyped-call]


def _consumers_and_depth(broker_url: str, queue: str) -> tuple[int, int]:
    with _connect(broker_url) as conn:
        try:
            _, depth, consumers = conn.default_channel.queue_declare(queue, passive=True)
        except Exception:
            return 0, 0
    return int(consumers), int(depth)


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _read_results(topic: str, count: int, timeout_s: float) -> list[InferenceResult]:
    return [InferenceResult.model_validate_json(v) for v in await read_topic(BOOTSTRAP, topic, count, timeout_s)]


def test_worker_runs_tasks_in_order_with_in_place_retries(broker_url: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTriton)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    metrics_port = _free_port()
    results_topic = f"it-results-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ, "SHARD_INDEX": "0", "METRICS_PORT": str(metrics_port),
        "CELERY_BROKER_URL": broker_url, "INFERENCE_SHARDS": "1", "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "TRITON_URL": f"127.0.0.1:{server.server_address[1]}", "RESULTS_TOPIC": results_topic,
        "INFERENCE_RETRY_ATTEMPTS": "3", "INFERENCE_RETRY_BACKOFF_S": "0.05", "LOG_LEVEL": "INFO",
    }
    # the production command line (start-smap.sh), shard 0
    cmd = [str(ROOT / ".venv/bin/celery"), "-A", "smap_analysis.celery_app", "worker", "-Q", queue_name(0),
           "-c", "1", "--prefetch-multiplier", "1", "-n", "shard0@%h", "--pool", "threads", "-E"]
    worker = subprocess.Popen(cmd, cwd=ROOT / "smap-analysis-worker", env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        publisher = CeleryPublisher(make_celery_app(TriggerSettings(celery_broker_url=broker_url,
                                                                    inference_shards=1)))
        tasks = [
            InferenceTask(satellite_id="SAT-001", entity="A-1", sensor_values=[i + k / 10 for k in range(N)],
                          index=i, timestamp=utc_now(), ground_truth_labels={"sensor_0": i % 2})
            for i in range(4)
        ]
        for task in tasks:
            publisher.publish(task, queue_name(0))
        results = asyncio.run(_read_results(results_topic, 3, timeout_s=25))
        assert [r.index for r in results] == [0, 2, 3]  # index 1 failed permanently; order kept
        r2 = results[1]
        assert (r2.stream_id, r2.model_name, r2.anomaly_score, r2.anomaly_detected) == (
            "SAT-001/A-1", "smap_A-1", 2.5, True)
        assert r2.reconstruction["sensor_3"] == pytest.approx((2 + 0.3) * 0.5)
        assert r2.sensor_values["sensor_24"] == pytest.approx(2 + 2.4)
        assert r2.ground_truth_labels == {"sensor_0": 0}
        assert r2.inference_time_ms > 0
        assert (r2.threshold, r2.detector_signal) == (1.5, 2.25)
        assert (r2.alarm_cause, r2.alarm_causes) == (8, ["value_quiet"])
        calls = [(m, sid, idx) for m, _, sid, idx in FakeTriton.calls]
        # one call each, except index 2: 503 once, retried in place before index 3 ran
        assert calls == [("smap_A-1", "SAT-001/A-1", i) for i in (0, 1, 2, 2, 3)]
        assert FakeTriton.calls[0][1] == tasks[0].sensor_values

        assert _metric(metrics_port, 'smap_worker_tasks_total{status="success"}') == 3
        assert _metric(metrics_port, 'smap_worker_tasks_total{status="permanent_error"}') == 1
        assert _metric(metrics_port, 'smap_worker_retries_total{stage="triton"}') == 1
        assert _consumers_and_depth(broker_url, queue_name(0)) == (1, 0)  # all acked, none left
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        server.shutdown()
    assert worker.returncode == 0, out[-3000:]
    assert "expects" in out
    assert f"metrics on :{metrics_port}" in out  # LOG_LEVEL=INFO reaches the worker's logging
