"""The analysis worker's task body with a fake Triton client and a fake Kafka publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError

from smap_shared.schemas import InferenceResult, InferenceTask
from smap_shared.settings import WorkerSettings
from smap_shared.streaming import worker as w
from smap_shared.streaming.metrics import worker_metrics
from smap_shared.triton.client import ModelOutputs, TritonInferenceError

N = 3


def _outputs(duplicate: bool = False, gap: int = 0) -> ModelOutputs:
    return ModelOutputs(
        reconstruction=np.array([0.5, 0.25, 1.0]), sensor_error=np.array([0.25, 0.0625, 0.0]),
        anomaly_score=4.5, anomaly_detected=True, threshold=3.25, duplicate=duplicate, gap=gap,
        detector_signal=2.75, alarm_cause=1 | 4,
    )


class FakeClient:
    def __init__(
        self, errors: list[BaseException] | None = None, outputs: ModelOutputs | None = None
    ) -> None:
        self.errors = list(errors or [])
        self.outputs = outputs or _outputs()
        self.calls: list[tuple[str, list[float], str | None, int | None]] = []

    def infer(
        self, entity: str, values: Any, stream_id: str | None = None, index: int | None = None
    ) -> ModelOutputs:
        self.calls.append((entity, list(values), stream_id, index))
        if self.errors:
            raise self.errors.pop(0)
        return self.outputs


class FakePublisher:
    def __init__(self, errors: list[BaseException] | None = None) -> None:
        self.errors = list(errors or [])
        self.published: list[tuple[str, bytes, bytes]] = []
        self.attempts = 0
        self.closed = False

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.published.append((topic, key, value))

    def close(self) -> None:
        self.closed = True


def _kwargs(**overrides: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "satellite_id": "SAT-001", "entity": "A-1", "sensor_values": [1.0, 0.0, 1.0], "index": 42,
        "timestamp": "2026-11-28T09:00:00.5Z",
        "ground_truth_labels": {"sensor_0": 1, "sensor_1": 1, "sensor_2": 1},
    }
    kw.update(overrides)
    return InferenceTask.model_validate(kw).model_dump(mode="json")


def _runner(client: FakeClient, publisher: FakePublisher, sleeps: list[float],
            attempts: int = 4) -> w.InferenceRunner:
    settings = WorkerSettings(inference_retry_attempts=attempts, inference_retry_backoff_s=0.2,
                              results_topic="results")
    return w.InferenceRunner(settings, client_factory=lambda: client, publisher_factory=lambda: publisher,
                             sleep=sleeps.append)


def _count(status: str) -> float:
    return float(worker_metrics().tasks.labels(status)._value.get())


def test_success_builds_and_publishes_the_result() -> None:
    client, publisher, sleeps = FakeClient(), FakePublisher(), list[float]()
    before = _count(w.STATUS_SUCCESS)
    result = _runner(client, publisher, sleeps).execute(_kwargs())
    assert client.calls == [("A-1", [1.0, 0.0, 1.0], "SAT-001/A-1", 42)]
    assert sleeps == []
    [(topic, key, value)] = publisher.published
    assert (topic, key) == ("results", b"SAT-001/A-1")
    assert InferenceResult.model_validate_json(value) == result
    assert result.model_dump(exclude={"inference_time_ms", "timestamp"}) == {
        "stream_id": "SAT-001/A-1", "satellite_id": "SAT-001", "entity": "A-1", "model_name": "smap_A-1",
        "index": 42, "sensor_values": {"sensor_0": 1.0, "sensor_1": 0.0, "sensor_2": 1.0},
        "reconstruction": {"sensor_0": 0.5, "sensor_1": 0.25, "sensor_2": 1.0},
        "sensor_error": {"sensor_0": 0.25, "sensor_1": 0.0625, "sensor_2": 0.0},
        "anomaly_score": 4.5, "anomaly_detected": True, "threshold": 3.25, "detector_signal": 2.75,
        "alarm_cause": 5, "ground_truth_labels": {"sensor_0": 1, "sensor_1": 1, "sensor_2": 1},
        "duplicate": False, "gap": 0,
    }
    assert result.timestamp.isoformat() == "2026-11-28T09:00:00.500000+00:00"
    assert 0 <= result.inference_time_ms < 1000
    assert _count(w.STATUS_SUCCESS) == before + 1


def test_duplicate_and_gap_are_passed_on() -> None:
    client = FakeClient(outputs=_outputs(duplicate=True, gap=3))
    result = _runner(client, FakePublisher(), []).execute(_kwargs())
    assert (result.duplicate, result.gap) == (True, 3)


def test_transient_triton_errors_are_retried_in_place() -> None:
    errors: list[BaseException] = [
        ConnectionRefusedError(111, "Connection refused"),
        TritonInferenceError("[StatusCode.UNAVAILABLE] Request for unknown model: 'smap_A-1' is not found"),
        TimeoutError("timed out"),
    ]
    client, publisher, sleeps = FakeClient(errors), FakePublisher(), list[float]()
    result = _runner(client, publisher, sleeps).execute(_kwargs())
    assert len(client.calls) == 4  # the same step, 3 failures then success: no re-queue
    assert {c[3] for c in client.calls} == {42}
    assert sleeps == [0.2, 0.4, 0.8]  # exponential backoff
    assert len(publisher.published) == 1
    assert result.index == 42


def test_transient_kafka_errors_are_retried_in_place() -> None:
    client, publisher, sleeps = FakeClient(), FakePublisher([KafkaConnectionError("down")] * 2), list[float]()
    _runner(client, publisher, sleeps).execute(_kwargs())
    assert len(client.calls) == 1  # inference not repeated for a publish retry
    assert publisher.attempts == 3
    assert len(publisher.published) == 1


def test_permanent_error_fails_without_retry() -> None:
    err = TritonInferenceError("[400] input 'input_data' expects shape [25], got [3]")
    client, publisher, sleeps = FakeClient([err]), FakePublisher(), list[float]()
    before = _count(w.STATUS_PERMANENT)
    with pytest.raises(w.PermanentTaskError, match="expects"):
        _runner(client, publisher, sleeps).execute(_kwargs())
    assert len(client.calls) == 1
    assert sleeps == []
    assert publisher.published == []
    assert _count(w.STATUS_PERMANENT) == before + 1


def test_retries_are_bounded() -> None:
    client = FakeClient([ConnectionRefusedError(111, "refused")] * 10)
    sleeps: list[float] = []
    before = _count(w.STATUS_EXHAUSTED)
    with pytest.raises(w.TransientExhaustedError, match="after 4 attempts"):
        _runner(client, FakePublisher(), sleeps, attempts=4).execute(_kwargs())
    assert len(client.calls) == 4
    assert sleeps == [0.2, 0.4, 0.8]
    assert _count(w.STATUS_EXHAUSTED) == before + 1


def test_invalid_kwargs_and_wrong_output_width() -> None:
    runner = _runner(FakeClient(), FakePublisher(), [])
    with pytest.raises(w.PermanentTaskError, match="invalid task kwargs"):
        runner.execute({"satellite_id": "SAT-001"})
    short = ModelOutputs(np.zeros(2), np.zeros(2), 0.0, False, 1.0, False, 0, 0.5, 0)
    with pytest.raises(w.PermanentTaskError, match="shapes"):
        _runner(FakeClient(outputs=short), FakePublisher(), []).execute(_kwargs())


def test_client_and_publisher_made_once_and_closed() -> None:
    made: list[str] = []
    publisher = FakePublisher()

    def client_factory() -> FakeClient:
        made.append("client")
        return FakeClient()

    def publisher_factory() -> FakePublisher:
        made.append("publisher")
        return publisher

    runner = w.InferenceRunner(
        WorkerSettings(), client_factory=client_factory, publisher_factory=publisher_factory
    )
    for i in range(3):
        runner.execute(_kwargs(index=i))
    assert made == ["client", "publisher"]
    runner.close()
    assert publisher.closed


def test_is_transient() -> None:
    assert w.is_transient(ConnectionRefusedError())
    assert w.is_transient(KafkaConnectionError())
    assert w.is_transient(TritonInferenceError("model 'smap_A-1' is not ready"))
    assert not w.is_transient(TritonInferenceError("input_data expects 25 values"))
    assert not w.is_transient(ValueError("bug"))


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
