"""The analysis worker's batch task body with a fake Triton client (infer_many) and a fake Kafka publisher
(publish_all): one request per model, rows and results in frame order, transient faults retried in place
for as long as they last, only the failed part retried, a stop hands the batch back, and a request the
model refuses is split so only its bad rows are dead-lettered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from smap_shared.model.contract import Array
from smap_shared.schemas import DeadLetter, InferenceResult, InferenceTask
from smap_shared.settings import WorkerSettings
from smap_shared.streaming import worker as w
from smap_shared.streaming.metrics import worker_metrics
from smap_shared.streaming.retry import StoppedError
from smap_shared.triton.client import ModelOutputs, ModelRequest, TritonInferenceError

N = 3  # sensors per frame in these tests (the worker does not check a frame's width against the fleet)

NOT_READY = "[StatusCode.UNAVAILABLE] Request for unknown model: 'smap_A-2' is not found"
REFUSED = "[400] input 'input_data' expects finite values in [-1e6, 1e6]"

#: One entry per infer_many call: None (every request answered), an exception (the whole call raises it) or
#: {entity: exception} (those requests answered with the exception, the others with their rows).
Plan = BaseException | dict[str, Exception] | None


def _row_outputs(row: Array, index: int) -> ModelOutputs:
    """The fake model's answer to one row: derived from the row and its index, so it can be checked."""
    return ModelOutputs(
        reconstruction=row / 2, anomaly_score=index + 0.5, anomaly_detected=index % 2 == 1,
        sensor_error=np.square(row), threshold=3.25, detector_signal=2.75, alarm_cause=1 | 4, duplicate=False,
        gap=0,
    )


class FakeClient:
    """infer_many that records every call's requests; `plans` script the calls in turn; a request with a row
    whose index is in `bad` is refused (a permanent error, like Triton's 'expects ...')."""

    def __init__(
        self, plans: Sequence[Plan] = (), bad: set[int] | None = None,
        answer: Callable[[Array, int], ModelOutputs] = _row_outputs,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.plans = list(plans)
        self.bad = bad or set()
        self.answer = answer
        self.on_call = on_call
        self.calls: list[list[ModelRequest]] = []
        self.closed = False

    def infer_many(self, requests: Sequence[ModelRequest]) -> list[list[ModelOutputs] | Exception]:
        self.calls.append(list(requests))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        plan = self.plans.pop(0) if self.plans else None
        if isinstance(plan, BaseException):
            raise plan
        out: list[list[ModelOutputs] | Exception] = []
        for req in requests:
            assert req.indices is not None and req.stream_ids is not None
            assert req.rows.shape == (len(req.indices), N) == (len(req.stream_ids), N)
            error = (plan or {}).get(req.entity)
            if error is not None:
                out.append(error)
            elif self.bad & set(req.indices):
                out.append(TritonInferenceError(REFUSED))
            else:
                out.append([self.answer(row, i) for row, i in zip(req.rows, req.indices, strict=True)])
        return out

    def entities(self, call: int) -> list[str]:
        return [r.entity for r in self.calls[call]]

    def close(self) -> None:
        self.closed = True


Message = tuple[str, bytes, bytes]


class FakePublisher:
    """publish_all that records every call; `fail` scripts the calls in turn: the positions (in that call's
    messages) that fail, or an exception the whole call raises. `published` holds what Kafka acked."""

    def __init__(self, fail: Sequence[set[int] | BaseException] = (),
                 on_call: Callable[[int], None] | None = None) -> None:
        self.fail = list(fail)
        self.on_call = on_call
        self.calls: list[list[Message]] = []
        self.published: list[Message] = []
        self.closed = False

    def publish_all(self, messages: Sequence[Message]) -> list[Exception | None]:
        self.calls.append(list(messages))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        plan = self.fail.pop(0) if self.fail else set()
        if isinstance(plan, BaseException):
            raise plan
        out: list[Exception | None] = []
        for pos, m in enumerate(messages):
            if pos in plan:
                out.append(KafkaConnectionError(f"message {pos} not acked"))
            else:
                self.published.append(m)
                out.append(None)
        return out

    def results(self) -> list[InferenceResult]:
        return [InferenceResult.model_validate_json(v) for t, _, v in self.published if t == "results"]

    def letters(self) -> list[tuple[bytes, DeadLetter]]:
        return [(k, DeadLetter.model_validate_json(v)) for t, k, v in self.published if t == "dlq"]

    def close(self) -> None:
        self.closed = True


def _task(satellite_id: str = "SAT-001", entity: str = "A-1", index: int = 42, **overrides: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "satellite_id": satellite_id, "entity": entity, "index": index,
        "sensor_values": [float(index), index + 0.25, index + 0.5], "timestamp": "2026-11-28T09:00:00.5Z",
        "ground_truth_labels": {"sensor_0": 1, "sensor_1": 0, "sensor_2": 1},
    }
    kw.update(overrides)
    return InferenceTask.model_validate(kw).model_dump(mode="json")


def _frames(*streams: tuple[str, str, int]) -> list[InferenceTask]:
    return [InferenceTask.model_validate(_task(s, e, i)) for s, e, i in streams]


#: 3 entities, 5 streams (A-1 flies on two satellites), interleaved as the trigger reads them.
MIXED = (
    ("SAT-001", "A-1", 10), ("SAT-002", "A-1", 20), ("SAT-001", "A-2", 30), ("SAT-001", "A-1", 11),
    ("SAT-003", "P-1", 40), ("SAT-002", "A-1", 21), ("SAT-001", "A-2", 31), ("SAT-002", "P-1", 50),
    ("SAT-001", "A-1", 12),
)


def _runner(client: FakeClient, publisher: FakePublisher,
            stop: threading.Event | None = None) -> w.InferenceRunner:
    settings = WorkerSettings(inference_retry_backoff_s=0.001, inference_retry_backoff_max_s=0.002,
                              results_topic="results", dlq_topic="dlq")
    return w.InferenceRunner(settings, client_factory=lambda: client, publisher_factory=lambda: publisher,
                             stop=stop or threading.Event())


def _count(status: str) -> float:
    return float(worker_metrics().tasks.labels(status)._value.get())


def _retries(stage: str) -> float:
    return float(worker_metrics().retries.labels(stage)._value.get())


def _blocked_s(stage: str) -> float:
    return float(worker_metrics().blocked_seconds.labels(stage)._value.get())


def _frames_count(outcome: str) -> float:
    return float(worker_metrics().frames.labels(outcome)._value.get())


def _keys(messages: Sequence[Message]) -> list[tuple[str, bytes, int]]:
    """(topic, key, index) of each message, for order checks."""
    out = []
    for topic, key, value in messages:
        model = InferenceResult if topic == "results" else DeadLetter
        parsed = model.model_validate_json(value)
        out.append((topic, key, parsed.index if isinstance(parsed, InferenceResult) else parsed.offset))
    return out


# ------------------------------------------------------------------ one frame (the hand-called task)


def test_one_frame_builds_and_publishes_the_result() -> None:
    client, publisher = FakeClient(), FakePublisher()
    before = _count(w.STATUS_SUCCESS)
    result = _runner(client, publisher).execute(_task(index=42))
    [[req]] = client.calls
    assert (req.entity, list(req.stream_ids or []), list(req.indices or [])) == ("A-1", ["SAT-001/A-1"], [42])
    assert req.rows.tolist() == [[42.0, 42.25, 42.5]]
    [(topic, key, value)] = publisher.published
    assert (topic, key) == ("results", b"SAT-001/A-1")
    assert isinstance(result, InferenceResult)
    assert InferenceResult.model_validate_json(value) == result
    assert result.model_dump(exclude={"inference_time_ms", "timestamp"}) == {
        "stream_id": "SAT-001/A-1", "satellite_id": "SAT-001", "entity": "A-1", "model_name": "smap_A-1",
        "index": 42, "sensor_values": {"sensor_0": 42.0, "sensor_1": 42.25, "sensor_2": 42.5},
        "reconstruction": {"sensor_0": 21.0, "sensor_1": 21.125, "sensor_2": 21.25},
        "sensor_error": {"sensor_0": 1764.0, "sensor_1": 42.25**2, "sensor_2": 42.5**2},
        "anomaly_score": 42.5, "anomaly_detected": False, "threshold": 3.25, "detector_signal": 2.75,
        "alarm_cause": 5, "ground_truth_labels": {"sensor_0": 1, "sensor_1": 0, "sensor_2": 1},
        "duplicate": False, "gap": 0,
    }
    assert result.timestamp.isoformat() == "2026-11-28T09:00:00.500000+00:00"
    assert 0 <= result.inference_time_ms < 1000
    assert _count(w.STATUS_SUCCESS) == before + 1


def test_duplicate_gap_and_a_nan_detector_signal_are_passed_on() -> None:
    def answer(row: Array, index: int) -> ModelOutputs:
        return ModelOutputs(row / 2, 1.0, False, np.square(row), 3.25, float("nan"), 0, True, 3)

    result = _runner(FakeClient(answer=answer), FakePublisher()).execute(_task())
    assert isinstance(result, InferenceResult)
    assert (result.duplicate, result.gap, result.detector_signal) == (True, 3, None)


def test_a_wrong_output_width_is_dead_lettered() -> None:
    def short(row: Array, index: int) -> ModelOutputs:
        return ModelOutputs(np.zeros(2), 0.0, False, np.zeros(2), 1.0, 0.5, 0, False, 0)

    publisher = FakePublisher()
    out = _runner(FakeClient(answer=short), publisher).execute(_task())
    assert isinstance(out, DeadLetter)
    assert out.reason.startswith("model_refused: model outputs for A-1 have shapes (2,)/(2,), expected (3,)")
    assert [(k, d.offset) for k, d in publisher.letters()] == [(b"SAT-001/A-1", 42)]
    assert publisher.results() == []


def test_invalid_kwargs_are_a_permanent_error() -> None:
    runner = _runner(FakeClient(), FakePublisher())
    before = _count(w.STATUS_INVALID)
    with pytest.raises(w.PermanentTaskError, match="invalid task kwargs"):
        runner.execute({"satellite_id": "SAT-001"})
    with pytest.raises(w.PermanentTaskError, match="invalid batch task kwargs"):
        runner.execute_batch({"frames": []})
    with pytest.raises(w.PermanentTaskError, match="invalid batch task kwargs"):
        runner.execute_batch({"frames": [{"satellite_id": "SAT-001"}]})
    with pytest.raises(w.PermanentTaskError, match="invalid batch task kwargs"):
        runner.execute_batch(_task())  # one frame is no batch
    assert _count(w.STATUS_INVALID) == before + 4


# ------------------------------------------------------------------ a batch


def test_a_batch_is_one_request_per_model_with_rows_in_frame_order() -> None:
    client, publisher = FakeClient(), FakePublisher()
    frames = _frames(*MIXED)
    before = (_count(w.STATUS_SUCCESS), _frames_count("result"))
    outcome = _runner(client, publisher).execute_batch({"frames": [f.model_dump(mode="json") for f in frames]})

    [requests] = client.calls  # one infer_many call, one request per entity (first appearance order)
    assert [r.entity for r in requests] == ["A-1", "A-2", "P-1"]
    by_entity = {r.entity: r for r in requests}
    for entity in ("A-1", "A-2", "P-1"):
        mine = [f for f in frames if f.entity == entity]
        req = by_entity[entity]
        assert list(req.indices or []) == [f.index for f in mine]
        assert list(req.stream_ids or []) == [f.stream_id for f in mine]
        assert req.rows.tolist() == [f.sensor_values for f in mine]

    # results in frame order, each from its own row, published keyed by stream id in that order
    assert [(r.stream_id, r.index) for r in outcome.results] == [(f.stream_id, f.index) for f in frames]
    assert outcome.dead_letters == []
    for f, r in zip(frames, outcome.results, strict=True):
        assert r.model_name == f"smap_{f.entity}"
        assert r.anomaly_score == f.index + 0.5
        assert list(r.reconstruction.values()) == [v / 2 for v in f.sensor_values]
    [messages] = publisher.calls
    assert [(t, k) for t, k, _ in messages] == [("results", f.stream_id.encode()) for f in frames]
    assert publisher.results() == outcome.results
    assert _count(w.STATUS_SUCCESS) == before[0] + 1
    assert _frames_count("result") == before[1] + len(frames)


def test_the_model_answering_the_wrong_number_of_rows_is_a_permanent_error() -> None:
    class Short(FakeClient):
        def infer_many(self, requests: Sequence[ModelRequest]) -> list[list[ModelOutputs] | Exception]:
            return [answer[:-1] if isinstance(answer, list) else answer for answer in super().infer_many(requests)]

    publisher = FakePublisher()
    before = _count(w.STATUS_PERMANENT)
    with pytest.raises(w.PermanentTaskError, match="smap_A-1 answered 2 rows for 3"):
        _runner(Short(), publisher).execute_batch({"frames": [_task(index=i) for i in range(3)]})
    assert publisher.calls == []
    assert _count(w.STATUS_PERMANENT) == before + 1


# ------------------------------------------------------------------ transient faults: retried in place


def test_transient_triton_errors_are_retried_in_place_without_an_attempt_budget() -> None:
    errors: list[BaseException] = [
        ConnectionRefusedError(111, "Connection refused"), TimeoutError("timed out"),
        concurrent.futures.TimeoutError(), TritonInferenceError(NOT_READY),
    ] * 5  # 20 failures of the whole call
    client, publisher = FakeClient(plans=errors), FakePublisher()
    retries, blocked = _retries("triton"), _blocked_s("triton")
    frames = _frames(*MIXED)
    outcome = _runner(client, publisher).run_batch(frames)
    assert len(client.calls) == 21  # 20 failures then success: the same batch, never re-queued
    assert all([r.entity for r in c] == ["A-1", "A-2", "P-1"] for c in client.calls)
    assert [r.index for r in outcome.results] == [f.index for f in frames]
    assert len(publisher.published) == len(frames)
    assert _retries("triton") == retries + 20
    # backoff 0.001 s doubling to at most 0.002 s: 0.001 + 19 x 0.002
    assert _blocked_s("triton") - blocked == pytest.approx(0.001 + 19 * 0.002)
    assert worker_metrics().blocked._value.get() == 0  # unblocked once the batch is done


def test_only_the_failing_models_request_is_retried() -> None:
    plans: list[Plan] = [{"A-2": TritonInferenceError(NOT_READY), "P-1": ConnectionResetError("reset")}]
    plans += [{"A-2": TritonInferenceError(NOT_READY)}] * 19
    client, publisher = FakeClient(plans=plans), FakePublisher()
    retries = _retries("triton")
    frames = _frames(*MIXED)
    outcome = _runner(client, publisher).run_batch(frames)
    assert client.entities(0) == ["A-1", "A-2", "P-1"]
    assert client.entities(1) == ["A-2", "P-1"]
    assert all(client.entities(c) == ["A-2"] for c in range(2, 21))
    assert len(client.calls) == 21
    a2 = client.calls[-1][0]
    assert list(a2.indices or []) == [30, 31]
    assert a2.rows.tolist() == [f.sensor_values for f in frames if f.entity == "A-2"]
    assert [(r.stream_id, r.index) for r in outcome.results] == [(f.stream_id, f.index) for f in frames]
    assert [r.anomaly_score for r in outcome.results] == [f.index + 0.5 for f in frames]
    assert _retries("triton") == retries + 20


def test_kafka_partial_failures_resend_only_the_failed_messages() -> None:
    frames = _frames(*MIXED)  # 9 results
    publisher = FakePublisher(fail=[{1, 4, 8}, KafkaTimeoutError("no ack in time"), {0}, set()])
    client = FakeClient()
    retries = _retries("kafka")
    outcome = _runner(client, publisher).run_batch(frames)
    assert len(client.calls) == 1  # inference is not repeated for a publish retry
    first = publisher.calls[0]
    assert len(first) == 9
    assert publisher.calls[1] == [first[1], first[4], first[8]]  # only the failed ones
    assert publisher.calls[2] == publisher.calls[1]  # the whole call failed: the same ones again
    assert publisher.calls[3] == [first[1]]  # position 0 of the third call
    assert len(publisher.calls) == 4
    assert sorted(publisher.published) == sorted(first)  # each acked exactly once
    assert len(publisher.published) == 9
    assert outcome.results == [InferenceResult.model_validate_json(v) for _, _, v in first]
    assert _retries("kafka") == retries + 3


def test_stop_while_triton_fails_raises_stopped_and_publishes_nothing() -> None:
    stop = threading.Event()
    made: list[str] = []

    def on_call(n: int) -> None:
        if n == 5:
            stop.set()

    client = FakeClient(plans=[ConnectionRefusedError("down")] * 10**6, on_call=on_call)
    publisher = FakePublisher()
    settings = WorkerSettings(inference_retry_backoff_s=0.001, inference_retry_backoff_max_s=0.002)
    def publisher_factory() -> FakePublisher:
        made.append("publisher")
        return publisher

    runner = w.InferenceRunner(settings, client_factory=lambda: client, publisher_factory=publisher_factory,
                               stop=stop)
    before = _count(w.STATUS_REQUEUED)
    with pytest.raises(StoppedError):
        runner.execute_batch({"frames": [f.model_dump(mode="json") for f in _frames(*MIXED)]})
    assert len(client.calls) == 5
    assert made == [] and publisher.calls == []  # nothing published: the whole batch goes back to its queue
    assert _count(w.STATUS_REQUEUED) == before + 1


def test_stop_while_kafka_fails_raises_stopped() -> None:
    stop = threading.Event()

    def on_call(n: int) -> None:
        if n == 3:
            stop.set()

    publisher = FakePublisher(fail=[ConnectionRefusedError("broker down")] * 100, on_call=on_call)
    before = _count(w.STATUS_REQUEUED)
    with pytest.raises(StoppedError):
        _runner(FakeClient(), publisher, stop).execute_batch({"frames": [_task(index=i) for i in range(3)]})
    assert len(publisher.calls) == 3
    assert publisher.published == []
    assert _count(w.STATUS_REQUEUED) == before + 1


def test_a_non_transient_publish_error_is_not_retried() -> None:
    publisher = FakePublisher(fail=[ValueError("bug")])
    with pytest.raises(ValueError, match="bug"):
        _runner(FakeClient(), publisher).run_batch(_frames(("SAT-001", "A-1", 1)))
    assert len(publisher.calls) == 1


# ------------------------------------------------------------------ permanent model errors


def test_a_refused_multi_row_request_is_split_so_only_the_bad_row_is_dead_lettered() -> None:
    frames = _frames(("SAT-001", "A-1", 10), ("SAT-001", "A-2", 30), ("SAT-001", "A-1", 11),
                     ("SAT-002", "A-1", 20))
    client, publisher = FakeClient(bad={11}), FakePublisher()
    before = (_frames_count("result"), _frames_count("dead_letter"), _count(w.STATUS_SUCCESS))
    outcome = _runner(client, publisher).execute_batch({"frames": [f.model_dump(mode="json") for f in frames]})

    assert client.entities(0) == ["A-1", "A-2"]
    assert list(client.calls[0][0].indices or []) == [10, 11, 20]
    # the refused 3-row request applied nothing: each of its rows again, alone, in order
    singles = client.calls[1:]
    assert [(r.entity, list(r.indices or []), list(r.stream_ids or [])) for [r] in singles] == [
        ("A-1", [10], ["SAT-001/A-1"]), ("A-1", [11], ["SAT-001/A-1"]), ("A-1", [20], ["SAT-002/A-1"]),
    ]
    assert [r.rows.tolist() for [r] in singles] == [[frames[0].sensor_values], [frames[2].sensor_values],
                                                     [frames[3].sensor_values]]

    assert [(r.stream_id, r.index) for r in outcome.results] == [
        ("SAT-001/A-1", 10), ("SAT-001/A-2", 30), ("SAT-002/A-1", 20)]
    assert [r.anomaly_score for r in outcome.results] == [10.5, 30.5, 20.5]
    [letter] = outcome.dead_letters
    assert letter.reason == f"model_refused: {REFUSED}"
    assert (letter.source_topic, letter.partition, letter.offset, letter.key, letter.service) == (
        "celery:smap-analysis-worker", -1, 11, "SAT-001/A-1", "smap-analysis-worker")
    assert letter.payload_encoding == "utf-8"
    assert InferenceTask.model_validate_json(letter.raw_payload) == frames[2]

    # results (frame order) then the dead letter, keyed by stream id, one publish
    [messages] = publisher.calls
    assert _keys(messages) == [("results", b"SAT-001/A-1", 10), ("results", b"SAT-001/A-2", 30),
                               ("results", b"SAT-002/A-1", 20), ("dlq", b"SAT-001/A-1", 11)]
    assert publisher.letters() == [(b"SAT-001/A-1", letter)]
    assert _frames_count("result") == before[0] + 3
    assert _frames_count("dead_letter") == before[1] + 1
    assert _count(w.STATUS_SUCCESS) == before[2] + 1  # a dead letter is a finished frame: the task succeeds


def test_a_refused_one_row_request_is_dead_lettered_without_a_second_request() -> None:
    client, publisher = FakeClient(bad={42}), FakePublisher()
    out = _runner(client, publisher).execute(_task(index=42))
    assert len(client.calls) == 1
    assert isinstance(out, DeadLetter)
    assert out.reason == f"model_refused: {REFUSED}" and out.offset == 42
    assert [k for k, _ in publisher.letters()] == [b"SAT-001/A-1"]


def test_transient_errors_of_the_split_requests_are_retried_in_place() -> None:
    # call 1: the 3-row request refused; calls 2..: the rows alone, the second row's first two tries time out
    plans: list[Plan] = [None, None, {"A-1": TimeoutError("timed out")}]
    plans.append({"A-1": TritonInferenceError(NOT_READY)})
    client, publisher = FakeClient(plans=plans, bad={1}), FakePublisher()
    outcome = _runner(client, publisher).run_batch(_frames(*(("SAT-001", "A-1", i) for i in range(3))))
    assert [list(r.indices or []) for c in client.calls for r in c] == [[0, 1, 2], [0], [1], [1], [1], [2]]
    assert [r.index for r in outcome.results] == [0, 2]
    assert [d.offset for d in outcome.dead_letters] == [1]


def test_stop_during_the_split_requests_raises_stopped() -> None:
    stop = threading.Event()

    def on_call(n: int) -> None:
        if n == 4:
            stop.set()

    timeout: Plan = {"A-1": TimeoutError("timed out")}
    plans: list[Plan] = [None, None, *[timeout] * 100]
    client, publisher = FakeClient(plans=plans, bad={1}, on_call=on_call), FakePublisher()
    with pytest.raises(StoppedError):
        _runner(client, publisher, stop).run_batch(_frames(*(("SAT-001", "A-1", i) for i in range(3))))
    assert publisher.calls == []


# ------------------------------------------------------------------ plumbing


def test_client_and_publisher_made_once_and_closed() -> None:
    made: list[str] = []
    client, publisher = FakeClient(), FakePublisher()

    def client_factory() -> FakeClient:
        made.append("client")
        return client

    def publisher_factory() -> FakePublisher:
        made.append("publisher")
        return publisher

    runner = w.InferenceRunner(WorkerSettings(), client_factory=client_factory,
                               publisher_factory=publisher_factory, stop=threading.Event())
    for i in range(3):
        runner.execute(_task(index=i))
    runner.execute_batch({"frames": [_task(index=i) for i in range(3, 6)]})
    assert made == ["client", "publisher"]
    runner.close()
    assert publisher.closed and client.closed


def test_is_transient() -> None:
    assert w.is_transient(ConnectionRefusedError())
    assert w.is_transient(TimeoutError())
    assert w.is_transient(concurrent.futures.TimeoutError())
    assert w.is_transient(KafkaConnectionError())
    assert w.is_transient(KafkaTimeoutError())
    assert w.is_transient(TritonInferenceError("model 'smap_A-1' is not ready"))
    assert w.is_transient(TritonInferenceError(NOT_READY))
    for marker in w.PERMANENT_MARKERS:
        assert not w.is_transient(TritonInferenceError(f"input_data {marker} 25 values"))
    assert not w.is_transient(ValueError("bug"))
    assert not w.is_transient(w.PermanentTaskError("no"))
    assert not w.is_transient(StoppedError("stopping"))


def test_metrics_port_per_shard() -> None:
    assert w.worker_metrics_port(WorkerSettings(metrics_port=9310), {"SHARD_INDEX": "3"}) == 9313
    assert w.worker_metrics_port(WorkerSettings(metrics_port=9310), {}) == 9310


def test_loop_thread_runs_coroutines() -> None:
    loop = w.LoopThread("test")
    try:
        async def add(a: int, b: int) -> int:
            await asyncio.sleep(0)
            return a + b

        assert [loop.run(add(i, 1), 5) for i in range(3)] == [1, 2, 3]
        with pytest.raises(TimeoutError):
            loop.run(asyncio.sleep(1), 0.01)
    finally:
        loop.close()
    loop.close()  # closing twice is harmless


@pytest.mark.parametrize("signal", [2.75, float("nan"), float("inf")])
def test_a_result_built_without_validation_is_the_validated_one_and_encodes_the_same(signal: float) -> None:
    """build_result skips pydantic's validation and InferenceResult.to_json its serializer (the hot path):
    both must give exactly what the validated model and model_dump_json give, for every field."""
    from datetime import UTC, datetime

    task = InferenceTask(satellite_id="SAT-007", entity="A-1", sensor_values=[0.25, -1.0, 3e-9], index=41,
                         timestamp=datetime(2026, 12, 7, 23, 0, 0, 500, tzinfo=UTC),
                         ground_truth_labels={"sensor_0": 1}, run_id="r1")
    outputs = ModelOutputs(
        reconstruction=np.array([0.5, np.float64(1) / 3, -2.0]), anomaly_score=0.125,
        anomaly_detected=True, sensor_error=np.array([1e-300, 0.0, 7.5]), threshold=3.25,
        detector_signal=signal, alarm_cause=5, duplicate=False, gap=2,
    )
    built = w.build_result(task, outputs, 12.5)
    validated = InferenceResult.model_validate(built.model_dump())
    assert built == validated
    assert {k: type(v) for k, v in built.__dict__.items()} == {k: type(v) for k, v in validated.__dict__.items()}
    import json

    assert json.loads(built.to_json()) == json.loads(validated.model_dump_json())
    assert InferenceResult.model_validate_json(built.to_json()) == validated
    assert set(json.loads(built.to_json())) == set(InferenceResult.model_fields)  # no field left out
