"""smap-analysis-worker: the body of Celery task `smap_analysis.tasks.run_omnianomaly_inference`.

One task = one frame of one stream: Triton inference with the stream id and index (the model keeps the
stream's state), then the InferenceResult to Kafka, acked before the task finishes (so a Celery ack means
the result is durable). Transient failures (Triton or Kafka unreachable, model not loaded yet) are retried
here, in place: Celery's retry() would re-queue the step behind later steps of the same stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from smap_shared.fleet import model_name
from smap_shared.schemas import InferenceResult, InferenceTask, sensor_keys
from smap_shared.settings import WorkerSettings
from smap_shared.streaming.kafka import start_producer
from smap_shared.streaming.metrics import WORKER_STATUSES, worker_metrics
from smap_shared.triton.client import ModelOutputs, OmniAnomalyClient, TritonInferenceError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Markers of a TritonInferenceError that no retry can fix (the request itself is wrong).
PERMANENT_MARKERS = ("expects",)
BACKOFF_MAX_S = 5.0
KAFKA_SEND_TIMEOUT_S = 30.0

STATUS_SUCCESS, STATUS_INVALID, STATUS_PERMANENT, STATUS_EXHAUSTED = WORKER_STATUSES


class PermanentTaskError(RuntimeError):
    """The task cannot succeed, whatever the retries: it fails without retry."""


class TransientExhaustedError(RuntimeError):
    """A transient failure outlasted the retry budget."""


class InferClient(Protocol):
    def infer(
        self, entity: str, values: npt.NDArray[np.float64] | list[float], stream_id: str | None = None,
        index: int | None = None,
    ) -> ModelOutputs: ...


class ResultPublisher(Protocol):
    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Blocking: returns once Kafka acked the message."""

    def close(self) -> None: ...


def is_transient(exc: BaseException) -> bool:
    """Retry in place? Connection trouble and a not (yet) available model: yes; a wrong request: no."""
    if isinstance(exc, TritonInferenceError):
        return not any(marker in str(exc) for marker in PERMANENT_MARKERS)
    return isinstance(exc, OSError | TimeoutError | concurrent.futures.TimeoutError | KafkaError)


class LoopThread:
    """An asyncio event loop in a daemon thread, for the synchronous Celery task to run coroutines on."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), self.loop).result(5)
        except Exception as exc:
            log.warning("cancelling the loop's pending tasks failed: %r", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class KafkaResultPublisher:
    """One aiokafka producer on one background event loop per worker process, started lazily."""

    def __init__(
        self, bootstrap_servers: str, client_id: str, timeout_s: float = KAFKA_SEND_TIMEOUT_S
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._loop = LoopThread("kafka-results")
        self._producer: Any = None

    async def _send(self, topic: str, key: bytes, value: bytes) -> None:
        if self._producer is None:
            self._producer = await start_producer(self.bootstrap_servers, client_id=self.client_id)
        meta = await self._producer.send_and_wait(topic, value=value, key=key)
        log.debug("published %s to %s[%d]@%d", key.decode(errors="replace"), topic, meta.partition, meta.offset)

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self._loop.run(self._send(topic, key, value), self.timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._loop.run(self._producer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("closing the Kafka producer failed: %r", exc)
            self._producer = None
        self._loop.close()


def build_result(task: InferenceTask, outputs: ModelOutputs, inference_time_ms: float) -> InferenceResult:
    n = len(task.sensor_values)
    if outputs.reconstruction.shape != (n,) or outputs.sensor_error.shape != (n,):
        raise PermanentTaskError(
            f"model outputs for {task.entity} have shapes {outputs.reconstruction.shape}/"
            f"{outputs.sensor_error.shape}, expected ({n},)"
        )
    keys = sensor_keys(n)
    return InferenceResult(
        stream_id=task.stream_id, satellite_id=task.satellite_id, entity=task.entity,
        model_name=model_name(task.entity), timestamp=task.timestamp, index=task.index,
        sensor_values=dict(zip(keys, task.sensor_values, strict=True)),
        reconstruction=dict(zip(keys, (float(v) for v in outputs.reconstruction), strict=True)),
        sensor_error=dict(zip(keys, (float(v) for v in outputs.sensor_error), strict=True)),
        anomaly_score=outputs.anomaly_score, anomaly_detected=outputs.anomaly_detected,
        threshold=outputs.threshold,
        detector_signal=outputs.detector_signal if math.isfinite(outputs.detector_signal) else None,
        alarm_cause=outputs.alarm_cause,
        inference_time_ms=inference_time_ms,
        ground_truth_labels=dict(task.ground_truth_labels), duplicate=outputs.duplicate, gap=outputs.gap,
    )


class InferenceRunner:
    """Runs tasks of one worker process; the Triton client and the Kafka publisher are made on first use
    and reused by every later task."""

    def __init__(
        self, settings: WorkerSettings, *, client_factory: Callable[[], InferClient] | None = None,
        publisher_factory: Callable[[], ResultPublisher] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._client_factory = client_factory or self._triton_client
        self._publisher_factory = publisher_factory or self._kafka_publisher
        self._client: InferClient | None = None
        self._publisher: ResultPublisher | None = None
        self._sleep = sleep
        self.metrics = worker_metrics()

    def _triton_client(self) -> InferClient:
        return OmniAnomalyClient(self.settings.triton_url, timeout_s=self.settings.triton_timeout_s)

    def _kafka_publisher(self) -> ResultPublisher:
        return KafkaResultPublisher(self.settings.kafka_bootstrap_servers, client_id="smap-analysis-worker")

    @property
    def client(self) -> InferClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    @property
    def publisher(self) -> ResultPublisher:
        if self._publisher is None:
            self._publisher = self._publisher_factory()
        return self._publisher

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        close = getattr(self._client, "close", None)
        if callable(close):
            close()
        self._client = None

    def _with_retry(self, stage: str, what: str, action: Callable[[], T]) -> T:
        attempts = self.settings.inference_retry_attempts
        delay = self.settings.inference_retry_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    raise PermanentTaskError(f"{stage} failed for {what}: {exc}") from exc
                if attempt == attempts:
                    raise TransientExhaustedError(
                        f"{stage} still failing for {what} after {attempts} attempts: {exc!r}"
                    ) from exc
                log.warning("%s failed for %s (attempt %d/%d: %r); retrying in %.2f s",
                            stage, what, attempt, attempts, exc, delay)
                self.metrics.retries.labels(stage).inc()
                self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        raise AssertionError("unreachable")

    def _infer(self, task: InferenceTask) -> tuple[ModelOutputs, float]:
        started = time.perf_counter()
        outputs = self.client.infer(
            task.entity, task.sensor_values, stream_id=task.stream_id, index=task.index
        )
        elapsed = time.perf_counter() - started
        self.metrics.inference_latency.observe(elapsed)
        return outputs, elapsed * 1000.0

    def _publish(self, result: InferenceResult) -> None:
        started = time.perf_counter()
        # keyed by stream id: a stream's results stay in one partition, in order
        self.publisher.publish(self.settings.results_topic, result.stream_id.encode(),
                               result.model_dump_json().encode())
        self.metrics.kafka_publish_latency.observe(time.perf_counter() - started)

    def run(self, task: InferenceTask) -> InferenceResult:
        what = f"{task.stream_id}#{task.index}"
        outputs, inference_ms = self._with_retry("triton", what, lambda: self._infer(task))
        result = build_result(task, outputs, inference_ms)
        self._with_retry("kafka", what, lambda: self._publish(result))
        log.debug("%s done (duplicate=%s)", what, outputs.duplicate)
        return result

    def execute(self, kwargs: Mapping[str, Any]) -> InferenceResult:
        """The task body: validate the kwargs, run, count the outcome; raises when the task fails."""
        try:
            task = InferenceTask.model_validate(dict(kwargs))
        except ValidationError as exc:
            self.metrics.tasks.labels(STATUS_INVALID).inc()
            log.error("invalid task kwargs, dropped: %s", exc)
            raise PermanentTaskError(f"invalid task kwargs: {exc}") from exc
        try:
            result = self.run(task)
        except PermanentTaskError as exc:
            self.metrics.tasks.labels(STATUS_PERMANENT).inc()
            log.error("%s#%d failed permanently: %s", task.stream_id, task.index, exc)
            raise
        except TransientExhaustedError as exc:
            self.metrics.tasks.labels(STATUS_EXHAUSTED).inc()
            log.error("%s#%d failed: %s", task.stream_id, task.index, exc)
            raise
        except Exception:
            self.metrics.tasks.labels(STATUS_PERMANENT).inc()
            log.exception("%s#%d failed unexpectedly", task.stream_id, task.index)
            raise
        self.metrics.tasks.labels(STATUS_SUCCESS).inc()
        return result


def worker_metrics_port(settings: WorkerSettings, environ: Mapping[str, str] | None = None) -> int:
    """Shard k serves its metrics on metrics_port + k (SHARD_INDEX, set by whoever starts the worker)."""
    env = os.environ if environ is None else environ
    return settings.metrics_port + int(env.get("SHARD_INDEX", "0"))


_runner: InferenceRunner | None = None
_runner_lock = threading.Lock()


def process_runner(settings_factory: Callable[[], WorkerSettings] = WorkerSettings) -> InferenceRunner:
    """The runner of this worker process (one Triton client, one Kafka producer), made on first use."""
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = InferenceRunner(settings_factory())
        return _runner


def close_process_runner() -> None:
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.close()
            _runner = None
