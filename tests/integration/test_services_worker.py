"""The analysis worker as it is started in production (the celery command line, one-thread pool, shard 0),
against RabbitMQ (a throwaway vhost), a private Tansu broker, and a stand-in for Triton that speaks the
KServe v2 HTTP protocol with binary tensors, as tritonclient and Triton do (the real OmniAnomaly models are
exercised by the end-to-end test).

The stand-in keeps per-stream state like the real model: a newer index is applied (a jump counts as a gap),
a redelivered one is answered with the outputs recorded the first time (`duplicate`). So it can tell
whether every step reached the model once and in order, and the results topic whether every frame's
result arrived exactly as often as expected.

Checked: micro-batch tasks published by the trigger's publisher run in order, one request of K rows per
model; the request carries the values, stream ids and indices; results reach Kafka in each stream's order;
a row the model refuses ('expects') is dead-lettered, the rest of its batch still scored; a redelivered
batch is answered as duplicates; a Triton outage longer than the old 8-attempt budget (503 from one model,
then refused connections) is retried in place while later tasks wait, without losing or repeating a step,
and a request of the batch that succeeded is not sent again; a stop during such an outage hands the task
back to its queue and the next worker finishes it; the one-frame task still works; the shard's metrics
endpoint counts all of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from alert_harness import tansu
from http_fakes import JsonHandler
from kafka_io import read_topic
from kombu.connection import Connection

from smap_shared.infra.ports import free_port
from smap_shared.routing import TASK_NAME, queue_name
from smap_shared.schemas import DeadLetter, InferenceBatch, InferenceResult, InferenceTask, utc_now
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.celery_app import make_celery_app
from smap_shared.streaming.trigger import CeleryPublisher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N = 25
BAD = -999.0  # a row whose first value is this is refused by the model (400 'expects')
#: The old worker gave up after 8 attempts (0.2 s doubling up to 2 s: about 9 s); the outage lasts longer.
OLD_ATTEMPTS, OUTAGE_S = 8, 12.0


# ---------------------------------------------------------------- a stateful stand-in for Triton


def _bytes_elements(raw: bytes) -> list[str]:
    """A BYTES tensor on the wire: each element a little-endian uint32 length, then its bytes."""
    out, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + size].decode())
        pos += 4 + size
    return out


@dataclass
class Call:
    model: str
    rows: list[tuple[str, int]]  # (stream id, index) of each row, in row order
    status: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Stream:
    last: int | None = None
    steps: int = 0
    history: dict[int, dict[str, Any]] = field(default_factory=dict)


class FakeTriton:
    """POST /v2/models/<model>/infer with K rows: one answer row per row ([K, n] and [K] outputs). A request
    with a BAD row answers 400 'expects' and applies nothing (all or nothing, as the model); a model in
    `failing` answers 503 'not ready'; while `dropping`, a request is read and its connection closed
    without an answer (Triton dying mid-request); `down()` closes the port (connections refused) until
    `up()`. Every request that reaches it is kept in `calls` (status 0: dropped)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.applied: dict[str, list[int]] = {}  # stream id -> indices applied, in order
        self.failing: set[str] = set()
        self.dropping = False
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, body, headers = fake.answer(self.path, body,
                                                    int(self.headers["Inference-Header-Content-Length"]))
                if status == 0:
                    self.close_connection = True  # no answer at all
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, path: str, body: bytes, header_len: int) -> tuple[int, bytes, dict[str, str]]:
        model = path.split("/")[3]
        request = json.loads(body[:header_len])
        tensors: dict[str, bytes] = {}
        shapes: dict[str, list[int]] = {}
        pos = header_len
        for inp in request["inputs"]:
            size = inp["parameters"]["binary_data_size"]
            tensors[inp["name"]], shapes[inp["name"]] = body[pos:pos + size], inp["shape"]
            pos += size
        values = np.frombuffer(tensors["input_data"], dtype=np.float64).reshape(shapes["input_data"])
        stream_ids = _bytes_elements(tensors["stream_id"])
        indices = [int(i) for i in np.frombuffer(tensors["sequence_index"], dtype=np.int64)]
        assert shapes["stream_id"] == shapes["sequence_index"] == [values.shape[0]] == [len(stream_ids)]
        with self.lock:
            if self.dropping:
                self.calls.append(Call(model, list(zip(stream_ids, indices, strict=True)), 0))
                return 0, b"", {}
            if model in self.failing:
                return self._error(model, stream_ids, indices, 503, f"model '{model}' is not ready")
            if (values[:, 0] == BAD).any():
                return self._error(model, stream_ids, indices, 400,
                                   f"input 'input_data' of '{model}' expects finite sensor values")
            rows = [self._step(model, sid, idx, v)
                    for sid, idx, v in zip(stream_ids, indices, values, strict=True)]
            self.calls.append(Call(model, list(zip(stream_ids, indices, strict=True)), 200))
        return self._tensors(model, rows)

    def _error(self, model: str, sids: list[str], indices: list[int], status: int, message: str
               ) -> tuple[int, bytes, dict[str, str]]:
        self.calls.append(Call(model, list(zip(sids, indices, strict=True)), status))
        return status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json"}

    def _step(self, model: str, sid: str, index: int, values: npt.NDArray[np.float64]) -> dict[str, Any]:
        st = self._streams.setdefault((model, sid), _Stream())
        if st.last is not None and index <= st.last:
            return {**st.history[index], "duplicate": True, "gap": 0}
        gap = 0 if st.last is None else index - st.last - 1
        st.last, st.steps = index, st.steps + 1
        recon = values * 0.5
        row = {
            "reconstruction": recon, "anomaly_score": index + 0.5, "anomaly_detected": index % 2 == 0,
            "sensor_error": (values - recon) ** 2, "threshold": 1.5,
            "detector_signal": st.steps + 0.25,  # the stream's step count: a step applied twice would show
            "alarm_cause": 8 if index % 2 == 0 else 0,
        }
        st.history[index] = row
        self.applied.setdefault(sid, []).append(index)
        return {**row, "duplicate": False, "gap": gap}

    @staticmethod
    def _tensors(model: str, rows: list[dict[str, Any]]) -> tuple[int, bytes, dict[str, str]]:
        """Every output as a binary tensor with K rows (Triton's answer to binary_data outputs)."""
        types = {"reconstruction": ("FP64", np.float64), "anomaly_score": ("FP64", np.float64),
                 "anomaly_detected": ("BOOL", np.bool_), "sensor_error": ("FP64", np.float64),
                 "threshold": ("FP64", np.float64), "detector_signal": ("FP64", np.float64),
                 "alarm_cause": ("INT64", np.int64), "duplicate": ("BOOL", np.bool_), "gap": ("INT64", np.int64)}
        outputs, blobs = [], []
        for name, (datatype, dtype) in types.items():
            data = np.array([r[name] for r in rows], dtype=dtype)
            blob = data.tobytes()
            outputs.append({"name": name, "datatype": datatype, "shape": list(data.shape),
                            "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        header = json.dumps({"model_name": model, "outputs": outputs}).encode()
        return 200, header + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                               "Inference-Header-Content-Length": str(len(header))}

    def unavailable_calls(self) -> list[Call]:
        """The requests answered 503 (refused connections never reach the fake)."""
        with self.lock:
            return [c for c in self.calls if c.status == 503]


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tansu(tmp_path_factory.mktemp("tansu")) as url:
        yield url


@pytest.fixture
def triton() -> Iterator[FakeTriton]:
    fake = FakeTriton()
    fake.up()
    try:
        yield fake
    finally:
        fake.down()


# ---------------------------------------------------------------- the worker process


@dataclass
class Worker:
    """`celery ... worker` for shard 0 as start-smap.sh runs it."""

    env: dict[str, str]
    metrics_port: int
    proc: subprocess.Popen[str] | None = None
    output: str = ""

    def start(self) -> Worker:
        cmd = [str(ROOT / ".venv/bin/celery"), "-A", "smap_analysis.celery_app", "worker", "-Q", queue_name(0),
               "-c", "1", "--prefetch-multiplier", "1", "-n", "shard0@%h", "--pool", "threads", "-E"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT / "smap-analysis-worker", env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        return self

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM (Celery's warm shutdown), then the exit status; the output is kept in `output`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out
        return self.proc.returncode

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_metric(self, name: str, at_least: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.metric(name)
            except OSError:  # not serving yet
                value = 0.0
            if value >= at_least or time.monotonic() > deadline:
                return value
            time.sleep(0.1)


def _worker(broker_url: str, bootstrap: str, triton: FakeTriton, results_topic: str, dlq_topic: str) -> Worker:
    port = free_port()
    env = {
        **os.environ, "SHARD_INDEX": "0", "METRICS_PORT": str(port), "CELERY_BROKER_URL": broker_url,
        "INFERENCE_SHARDS": "1", "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TRITON_URL": triton.url,
        "RESULTS_TOPIC": results_topic, "DLQ_TOPIC": dlq_topic, "LOG_LEVEL": "INFO",
        "INFERENCE_RETRY_BACKOFF_S": "0.1", "INFERENCE_RETRY_BACKOFF_MAX_S": "1.0",
    }
    return Worker(env, port).start()


def _depth(broker_url: str, queue: str) -> tuple[int, int]:
    """(consumers, ready messages) of the queue."""
    with Connection(broker_url) as conn:  # type: ignore[no-untyped-call]
        _, depth, consumers = conn.default_channel.queue_declare(queue, passive=True)
    return int(consumers), int(depth)


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _results(bootstrap: str, topic: str, want: int, timeout_s: float) -> list[InferenceResult]:
    raw = asyncio.run(read_topic(bootstrap, topic, want, timeout_s))
    return [InferenceResult.model_validate_json(v) for v in raw]


def _all_of(bootstrap: str, topic: str) -> list[bytes]:
    """Everything in the topic (read until a few quiet seconds passed)."""
    return asyncio.run(read_topic(bootstrap, topic, 10**6, timeout_s=3))


def _by_stream(results: list[InferenceResult]) -> dict[str, list[tuple[int, bool]]]:
    out: dict[str, list[tuple[int, bool]]] = {}
    for r in results:
        out.setdefault(r.stream_id, []).append((r.index, r.duplicate))
    return out


STREAMS = [("SAT-001", "A-1"), ("SAT-002", "A-1"), ("SAT-003", "D-1")]  # two models: two requests a batch


def _frame(sat: str, entity: str, i: int) -> InferenceTask:
    values = [i + k / 10 for k in range(N)]
    if (sat, entity, i) == ("SAT-001", "A-1", 3):
        values[0] = BAD
    return InferenceTask(satellite_id=sat, entity=entity, sensor_values=values, index=i, timestamp=utc_now(),
                         ground_truth_labels={"sensor_0": i % 2})


def _batch(indices: range) -> InferenceBatch:
    """Each stream's frames of `indices`, interleaved as the trigger reads them."""
    return InferenceBatch(frames=[_frame(s, e, i) for i in indices for s, e in STREAMS])


# ---------------------------------------------------------------- the tests


def test_worker_runs_batches_in_order_and_retries_in_place_through_an_outage(
    broker_url: str, bootstrap: str, triton: FakeTriton
) -> None:
    run = uuid.uuid4().hex[:8]
    results_topic, dlq_topic = f"it-results-{run}", f"it-dlq-{run}"
    worker = _worker(broker_url, bootstrap, triton, results_topic, dlq_topic)
    publisher = CeleryPublisher(make_celery_app(TriggerSettings(celery_broker_url=broker_url, inference_shards=1)))
    q = queue_name(0)
    try:
        b1, b2, b4, b5 = _batch(range(0, 2)), _batch(range(2, 4)), _batch(range(4, 6)), _batch(range(6, 8))
        publisher.publish(b1, q)
        publisher.publish(b2, q)  # SAT-001/A-1#3 is refused by the model
        first = _results(bootstrap, results_topic, 11, timeout_s=30)
        assert _by_stream(first) == {
            "SAT-001/A-1": [(0, False), (1, False), (2, False)],
            "SAT-002/A-1": [(i, False) for i in range(4)],
            "SAT-003/D-1": [(i, False) for i in range(4)],
        }
        r = next(r for r in first if (r.stream_id, r.index) == ("SAT-002/A-1", 2))
        assert (r.model_name, r.anomaly_score, r.anomaly_detected) == ("smap_A-1", 2.5, True)
        assert r.reconstruction["sensor_3"] == pytest.approx((2 + 0.3) * 0.5)
        assert r.sensor_values["sensor_24"] == pytest.approx(2 + 2.4)
        assert r.sensor_error["sensor_4"] == pytest.approx(((2 + 0.4) * 0.5) ** 2)
        assert r.ground_truth_labels == {"sensor_0": 0}
        assert r.inference_time_ms > 0
        assert (r.threshold, r.detector_signal) == (1.5, 3.25)  # its stream's third step
        assert (r.alarm_cause, r.alarm_causes) == (8, ["value_quiet"])
        [letter] = [DeadLetter.model_validate_json(v)
                    for v in asyncio.run(read_topic(bootstrap, dlq_topic, 1, timeout_s=10))]
        assert letter.reason.startswith("model_refused: ") and "expects" in letter.reason
        assert (letter.key, letter.offset, letter.service) == ("SAT-001/A-1", 3, "smap-analysis-worker")
        assert InferenceTask.model_validate_json(letter.raw_payload) == b2.frames[3]
        # one request of K rows per model and batch; the A-1 request with the bad row was then sent row by row
        with triton.lock:
            calls = [(c.model, c.rows, c.status) for c in triton.calls]
        a1 = [(s, i) for i in range(2, 4) for s in ("SAT-001/A-1", "SAT-002/A-1")]
        assert sorted(calls[:2]) == [
            ("smap_A-1", [(s, i) for i in range(2) for s in ("SAT-001/A-1", "SAT-002/A-1")], 200),
            ("smap_D-1", [("SAT-003/D-1", 0), ("SAT-003/D-1", 1)], 200),
        ]
        assert sorted(calls[2:4]) == [("smap_A-1", a1, 400),
                                      ("smap_D-1", [("SAT-003/D-1", 2), ("SAT-003/D-1", 3)], 200)]
        assert calls[4:] == [("smap_A-1", [row], 400 if row == ("SAT-001/A-1", 3) else 200) for row in a1]

        publisher.publish(b1, q)  # a redelivered batch: the model replays, the results say so
        replayed = [r for r in _results(bootstrap, results_topic, 17, timeout_s=20) if r.duplicate]
        assert sorted((r.stream_id, r.index, r.duplicate) for r in replayed) == sorted(
            (f.stream_id, f.index, True) for f in b1.frames)
        assert {(r.stream_id, r.index): r.detector_signal for r in replayed} == {
            (r.stream_id, r.index): r.detector_signal for r in first if r.index < 2}

        # the outage: D-1 not ready (503) while A-1 answers, then connections closed without an answer, then
        # Triton unreachable altogether
        retries_before = worker.metric('smap_worker_retries_total{stage="triton"}')
        triton.failing.add("smap_D-1")
        publisher.publish(b4, q)
        publisher.publish(b5, q)
        one = _frame("SAT-003", "D-1", 8)
        # the one-frame task, sent as a user's own Celery client would (kombu's json; batches go as smap-json)
        publisher.app.send_task(TASK_NAME, kwargs=one.model_dump(mode="json"), queue=q, serializer="json")
        _wait(lambda: len(triton.unavailable_calls()) >= 2, 15, "the first D-1 requests answered 503")
        started = triton.unavailable_calls()[0].at
        time.sleep(OUTAGE_S / 3)
        assert worker.metric("smap_worker_blocked") == 1
        triton.dropping = True
        time.sleep(max(0.0, started + OUTAGE_S * 2 / 3 - time.monotonic()))
        triton.down()
        time.sleep(max(0.0, started + OUTAGE_S - time.monotonic()))
        assert _depth(broker_url, q) == (1, 2)  # b5 and the one-frame task wait behind the blocked b4
        assert worker.metric("smap_worker_blocked") == 1
        triton.failing.clear()
        triton.dropping = False
        triton.up()
        outage_s = time.monotonic() - started

        later = [r for r in _results(bootstrap, results_topic, 30, timeout_s=30) if r.index >= 4]
        assert _by_stream(later) == {
            "SAT-001/A-1": [(i, False) for i in range(4, 8)],
            "SAT-002/A-1": [(i, False) for i in range(4, 8)],
            "SAT-003/D-1": [(i, False) for i in range(4, 9)],
        }
        assert next(r.gap for r in later if (r.stream_id, r.index) == ("SAT-001/A-1", 4)) == 1  # #3 refused
        # b4's A-1 request succeeded at once and was never sent again; only D-1 was retried
        with triton.lock:
            b4_calls = [(c.model, c.status) for c in triton.calls if ("SAT-003/D-1", 4) in c.rows
                        or ("SAT-001/A-1", 4) in c.rows]
        failed = [c for c in b4_calls if c[1] != 200]
        assert b4_calls.count(("smap_A-1", 200)) == 1 and b4_calls.count(("smap_D-1", 200)) == 1
        assert set(failed) == {("smap_D-1", 503), ("smap_D-1", 0)}  # refused connections never reach it
        retries = worker.wait_metric('smap_worker_retries_total{stage="triton"}', retries_before + OLD_ATTEMPTS,
                                     5) - retries_before
        assert retries > OLD_ATTEMPTS and outage_s >= OUTAGE_S  # more than the old budget, still not dropped
        assert worker.metric('smap_worker_blocked_seconds_total{stage="triton"}') >= OUTAGE_S * 0.75
        assert worker.metric("smap_worker_blocked") == 0

        # every step reached the model once, in order; the refused one never
        assert triton.applied == {
            "SAT-001/A-1": [0, 1, 2, 4, 5, 6, 7], "SAT-002/A-1": list(range(8)), "SAT-003/D-1": list(range(9)),
        }
        assert worker.metric('smap_worker_tasks_total{status="success"}') == 6  # 5 batches + the one frame
        assert worker.metric('smap_worker_tasks_total{status="permanent_error"}') == 0
        assert worker.metric('smap_worker_frames_total{outcome="result"}') == 30
        assert worker.metric('smap_worker_frames_total{outcome="dead_letter"}') == 1
        assert _depth(broker_url, q) == (1, 0)  # all acked, none left
    finally:
        code = worker.stop()
    assert code == 0, worker.output[-3000:]
    assert f"metrics on 127.0.0.1:{worker.metrics_port}" in worker.output  # INFO reaches it; loopback by default
    assert "expects" in worker.output
    # exactly as many results as expected, nothing more (no retry produced a result twice)
    every = [InferenceResult.model_validate_json(v) for v in _all_of(bootstrap, results_topic)]
    counts: dict[tuple[str, int, bool], int] = {}
    for r in every:
        counts[(r.stream_id, r.index, r.duplicate)] = counts.get((r.stream_id, r.index, r.duplicate), 0) + 1
    expected = {(s, i, False): 1 for s, top in (("SAT-001/A-1", 8), ("SAT-002/A-1", 8), ("SAT-003/D-1", 9))
                for i in range(top) if (s, i) != ("SAT-001/A-1", 3)}
    expected.update({(f.stream_id, f.index, True): 1 for f in b1.frames})
    assert counts == expected
    assert len(_all_of(bootstrap, dlq_topic)) == 1


def test_a_stop_during_an_outage_hands_the_batch_back_and_the_next_worker_finishes_it(
    broker_url: str, bootstrap: str, triton: FakeTriton
) -> None:
    run = uuid.uuid4().hex[:8]
    results_topic, dlq_topic = f"it-results-{run}", f"it-dlq-{run}"
    publisher = CeleryPublisher(make_celery_app(TriggerSettings(celery_broker_url=broker_url, inference_shards=1)))
    q = queue_name(0)
    streams = [("SAT-011", "A-1"), ("SAT-012", "D-1")]
    batches = [InferenceBatch(frames=[_frame(s, e, i) for i in range(k, k + 3) for s, e in streams])
               for k in (0, 3)]
    triton.down()  # Triton unreachable from the start
    first = _worker(broker_url, bootstrap, triton, results_topic, dlq_topic)
    try:
        for b in batches:
            publisher.publish(b, q)
        retries = first.wait_metric('smap_worker_retries_total{stage="triton"}', 3, 30)
        assert retries >= 3  # the first batch is being retried in place
        assert _depth(broker_url, q) == (1, 1)
    finally:
        code = first.stop()
    assert code == 0, first.output[-3000:]
    assert "goes back to its queue" in first.output
    _wait(lambda: _depth(broker_url, q) == (0, 2), 10, "both batches back in the queue")

    triton.up()
    second = _worker(broker_url, bootstrap, triton, results_topic, dlq_topic)
    try:
        results = _results(bootstrap, results_topic, 12, timeout_s=30)
        assert _by_stream(results) == {f"{s}/{e}": [(i, False) for i in range(6)] for s, e in streams}
        assert triton.applied == {f"{s}/{e}": list(range(6)) for s, e in streams}
        assert second.metric('smap_worker_tasks_total{status="success"}') == 2
        _wait(lambda: _depth(broker_url, q) == (1, 0), 5, "both batches acked")
    finally:
        code = second.stop()
    assert code == 0, second.output[-3000:]
    assert len(_all_of(bootstrap, results_topic)) == 12  # each frame's result once
    assert _all_of(bootstrap, dlq_topic) == []
