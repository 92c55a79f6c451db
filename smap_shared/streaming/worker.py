"""smap-analysis-worker: the body of the Celery tasks `smap_analysis.tasks.run_omnianomaly_batch` (an
ordered micro-batch of frames of one shard, as the trigger publishes them) and
`smap_analysis.tasks.run_omnianomaly_inference` (one frame, for a user calling it by hand).

A batch is scored with one Triton request per model present in it (all in flight at once; a model's rows in
their order, so every stream's steps stay in order), then its results are produced to Kafka without awaiting
each one and awaited all together (acks=all) before the task returns: a Celery ack means every frame of the
batch has its result durable in Kafka, or (for a permanent fault: data the model refuses) a dead letter with
the reason. A transient fault (Triton, Kafka or the model's state store unreachable, a model not loaded yet)
blocks the shard and is retried in place with capped backoff, for as long as it lasts: no attempt budget drops
work. A stop signal ends the retry and the task is handed back to its queue (Reject with requeue), at its
place, so nothing is lost and the order holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from pydantic import BaseModel, ValidationError

from smap_shared.fleet import model_name
from smap_shared.model.streams import REFUSED
from smap_shared.schemas import DeadLetter, InferenceBatch, InferenceResult, InferenceTask, sensor_keys
from smap_shared.settings import WorkerSettings
from smap_shared.streaming.kafka import start_producer
from smap_shared.streaming.metrics import WORKER_STATUSES, worker_metrics
from smap_shared.streaming.retry import Backoff, StoppedError, retry_blocking
from smap_shared.streaming.validation import MODEL_REFUSED, Invalid, dead_letter
from smap_shared.triton.client import ModelOutputs, ModelRequest, OmniAnomalyClient, TritonInferenceError

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: Markers of a TritonInferenceError that no retry can fix (the request itself is wrong).
PERMANENT_MARKERS = ("expects", "unexpected shape", "contains NaN", "must have the same number of rows", REFUSED)
KAFKA_SEND_TIMEOUT_S = 30.0
SERVICE = "smap-analysis-worker"

STATUS_SUCCESS, STATUS_INVALID, STATUS_PERMANENT, STATUS_REQUEUED = WORKER_STATUSES

#: Set when the worker process is asked to stop (Celery's worker_shutting_down): a retry in progress ends,
#: and its task goes back to the queue.
SHUTDOWN = threading.Event()


class PermanentTaskError(RuntimeError):
    """The task cannot succeed, whatever the retries: it fails without retry."""


class InferClient(Protocol):
    def infer_many(self, requests: Sequence[ModelRequest]) -> list[list[ModelOutputs] | Exception]: ...


class ResultPublisher(Protocol):
    def publish_all(self, messages: Sequence[tuple[str, bytes, bytes]]) -> list[Exception | None]:
        """Blocking: sends every (topic, key, value) without waiting for each, then waits for all acks;
        one entry per message, None where Kafka acked it."""

    def close(self) -> None: ...


def is_transient(exc: BaseException) -> bool:
    """Retry in place? Connection trouble and a not (yet) available model: yes; a wrong request: no."""
    if isinstance(exc, TritonInferenceError):
        return not any(marker in str(exc) for marker in PERMANENT_MARKERS)
    if isinstance(exc, MessageSizeTooLargeError):  # a record the broker will never take
        return False
    # http.client.HTTPException: tritonclient's geventhttpclient raises HTTPConnectionClosed (one of those, not
    # an OSError) when Triton closes the connection before answering (a crash or restart mid-request)
    return isinstance(exc, OSError | TimeoutError | concurrent.futures.TimeoutError | KafkaError
                      | http.client.HTTPException)


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

    async def _send_all(self, messages: Sequence[tuple[str, bytes, bytes]]) -> list[Exception | None]:
        if self._producer is None:
            self._producer = await start_producer(self.bootstrap_servers, client_id=self.client_id)
        futures = [await self._producer.send(topic, value=value, key=key) for topic, key, value in messages]
        done = await asyncio.gather(*futures, return_exceptions=True)
        return [d if isinstance(d, Exception) else None for d in done]

    def publish_all(self, messages: Sequence[tuple[str, bytes, bytes]]) -> list[Exception | None]:
        return self._loop.run(self._send_all(messages), self.timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._loop.run(self._producer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("closing the Kafka producer failed: %r", exc)
            self._producer = None
        self._loop.close()


def build_result(task: InferenceTask, outputs: ModelOutputs, inference_time_ms: float) -> InferenceResult:
    """The frame's result. Built without validation (`model_construct`): every value comes from a validated
    task or the model's typed outputs (tests check it equals the validated result), and validating ~100
    fields per frame was a tenth of a worker's CPU."""
    n = len(task.sensor_values)
    if outputs.reconstruction.shape != (n,) or outputs.sensor_error.shape != (n,):
        raise PermanentTaskError(
            f"model outputs for {task.entity} have shapes {outputs.reconstruction.shape}/"
            f"{outputs.sensor_error.shape}, expected ({n},)"
        )
    keys = sensor_keys(n)
    signal = float(outputs.detector_signal)
    return InferenceResult.model_construct(
        stream_id=task.stream_id, satellite_id=task.satellite_id, entity=task.entity,
        model_name=model_name(task.entity), timestamp=task.timestamp, index=task.index,
        sensor_values=dict(zip(keys, task.sensor_values, strict=True)),
        reconstruction=dict(zip(keys, outputs.reconstruction.astype(float).tolist(), strict=True)),
        sensor_error=dict(zip(keys, outputs.sensor_error.astype(float).tolist(), strict=True)),
        anomaly_score=float(outputs.anomaly_score), anomaly_detected=bool(outputs.anomaly_detected),
        threshold=float(outputs.threshold), inference_time_ms=float(inference_time_ms),
        detector_signal=signal if math.isfinite(signal) else None, alarm_cause=int(outputs.alarm_cause),
        ground_truth_labels=dict(task.ground_truth_labels), duplicate=bool(outputs.duplicate),
        gap=int(outputs.gap),
    )


@dataclass
class BatchOutcome:
    results: list[InferenceResult]
    dead_letters: list[DeadLetter]


class InferenceRunner:
    """Runs the tasks of one worker process; the Triton client and the Kafka publisher are made on first use
    and reused by every later task."""

    def __init__(
        self, settings: WorkerSettings, *, client_factory: Callable[[], InferClient] | None = None,
        publisher_factory: Callable[[], ResultPublisher] | None = None,
        stop: threading.Event = SHUTDOWN,
    ) -> None:
        self.settings = settings
        self._client_factory = client_factory or self._triton_client
        self._publisher_factory = publisher_factory or self._kafka_publisher
        self._client: InferClient | None = None
        self._publisher: ResultPublisher | None = None
        self.stop = stop
        self.backoff = Backoff(settings.inference_retry_backoff_s, settings.inference_retry_backoff_max_s)
        self.metrics = worker_metrics()

    def _triton_client(self) -> InferClient:
        return OmniAnomalyClient(self.settings.triton_url, timeout_s=self.settings.triton_timeout_s,
                                 concurrency=self.settings.triton_concurrency)

    def _kafka_publisher(self) -> ResultPublisher:
        return KafkaResultPublisher(self.settings.kafka_bootstrap_servers, client_id=SERVICE)

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

    def _blocked(self, stage: str) -> Callable[[float], None]:
        def count(delay: float) -> None:
            self.metrics.retries.labels(stage).inc()
            self.metrics.blocked_seconds.labels(stage).inc(delay)
            self.metrics.blocked.set(1)

        return count

    # ------------------------------------------------------------------ Triton
    def _infer_groups(
        self, frames: Sequence[InferenceTask]
    ) -> tuple[dict[int, ModelOutputs], dict[int, str], float]:
        """Outputs of every frame (by position), reasons of the frames the model refused, and the time the
        successful requests took (ms). One request per model; transient failures retried until done."""
        groups: dict[str, list[int]] = {}
        for pos, f in enumerate(frames):
            groups.setdefault(f.entity, []).append(pos)
        outputs: dict[int, ModelOutputs] = {}
        refused: dict[int, str] = {}
        todo = {e: [frames[p] for p in positions] for e, positions in groups.items()}
        elapsed_ms = 0.0

        def attempt() -> None:
            nonlocal elapsed_ms
            entities = list(todo)
            reqs = [self._request(e, todo[e]) for e in entities]
            started = time.perf_counter()
            answers = self.client.infer_many(reqs)
            took = time.perf_counter() - started
            transient: Exception | None = None
            for entity, answer in zip(entities, answers, strict=True):
                positions = groups[entity]
                if isinstance(answer, Exception):
                    if is_transient(answer):
                        transient = answer
                        continue
                    self._refused_rows(entity, positions, frames, outputs, refused, answer)
                elif len(answer) != len(positions):
                    raise PermanentTaskError(
                        f"{model_name(entity)} answered {len(answer)} rows for {len(positions)}")
                else:
                    outputs.update(zip(positions, answer, strict=True))
                    self.metrics.inference_latency.observe(took)
                    elapsed_ms = max(elapsed_ms, took * 1000.0)
                del todo[entity]
            if transient is not None:
                raise transient

        retry_blocking(attempt, stop=self.stop, what=f"Triton inference of {len(frames)} frames",
                       transient=is_transient, backoff=self.backoff, on_retry=self._blocked("triton"))
        return outputs, refused, elapsed_ms

    @staticmethod
    def _request(entity: str, frames: Sequence[InferenceTask]) -> ModelRequest:
        return ModelRequest(entity, np.array([f.sensor_values for f in frames], dtype=np.float64),
                            [f.stream_id for f in frames], [f.index for f in frames],
                            [f.run_id for f in frames], [f.sequence_start for f in frames])

    def _refused_rows(self, entity: str, positions: list[int], frames: Sequence[InferenceTask],
                      outputs: dict[int, ModelOutputs], refused: dict[int, str], error: Exception) -> None:
        """A request the model refused applied nothing (a request is all or nothing): with one row, that row
        is refused; with several, each row is sent alone, in order, so only the bad ones are refused."""
        if len(positions) == 1:
            refused[positions[0]] = str(error)
            return
        for pos in positions:
            f = frames[pos]
            req = self._request(entity, [f])

            def one(req: ModelRequest = req) -> list[ModelOutputs] | Exception:
                answer = self.client.infer_many([req])[0]
                if isinstance(answer, Exception) and is_transient(answer):
                    raise answer
                return answer

            answer = retry_blocking(one, stop=self.stop, what=f"Triton inference of {f.stream_id}#{f.index}",
                                    transient=is_transient, backoff=self.backoff, on_retry=self._blocked("triton"))
            if isinstance(answer, Exception):
                refused[pos] = str(answer)
            elif len(answer) != 1:
                raise PermanentTaskError(f"{model_name(entity)} answered {len(answer)} rows for 1")
            else:
                outputs[pos] = answer[0]

    # ------------------------------------------------------------------ Kafka
    def _publish(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        """Every message acked by Kafka, retrying only the ones that failed, for as long as it takes."""
        todo = list(messages)

        def attempt() -> None:
            nonlocal todo
            started = time.perf_counter()
            errors = self.publisher.publish_all(todo)
            failed = [m for m, e in zip(todo, errors, strict=True) if e is not None]
            first = next((e for e in errors if e is not None), None)
            todo = failed
            if first is not None:
                raise first
            self.metrics.kafka_publish_latency.observe(time.perf_counter() - started)

        if todo:
            retry_blocking(attempt, stop=self.stop, what=f"producing {len(messages)} results to Kafka",
                           transient=is_transient, backoff=self.backoff, on_retry=self._blocked("kafka"))

    # ------------------------------------------------------------------ a batch
    def run_batch(self, frames: Sequence[InferenceTask]) -> BatchOutcome:
        """Score the frames and make their results (or dead letters) durable in Kafka; raises StoppedError when
        asked to stop before that."""
        started = time.perf_counter()
        try:
            outcome = self._run_batch(frames)
        finally:
            self.metrics.blocked.set(0)
        self.metrics.batch_latency.observe(time.perf_counter() - started)
        return outcome

    def _run_batch(self, frames: Sequence[InferenceTask]) -> BatchOutcome:
        outputs, refused, took_ms = self._infer_groups(frames)
        results: list[InferenceResult] = []
        letters: list[DeadLetter] = []
        for pos, f in enumerate(frames):
            if pos in refused:
                letters.append(self._dead_letter(f, refused[pos]))
                continue
            try:
                results.append(build_result(f, outputs[pos], took_ms))
            except PermanentTaskError as exc:
                letters.append(self._dead_letter(f, str(exc)))
        # keyed by stream id: a stream's results stay in one partition, in order
        messages = [(self.settings.results_topic, r.stream_id.encode(), r.to_json()) for r in results]
        messages += [(self.settings.dlq_topic, d.key.encode() if d.key else b"", d.model_dump_json().encode())
                     for d in letters]
        self._publish(messages)
        self.metrics.frames.labels("result").inc(len(results))
        self.metrics.frames.labels("dead_letter").inc(len(letters))
        return BatchOutcome(results, letters)

    @staticmethod
    def _dead_letter(frame: InferenceTask, detail: str) -> DeadLetter:
        log.error("%s#%d dead-lettered: %s", frame.stream_id, frame.index, detail)
        return dead_letter(Invalid(MODEL_REFUSED, detail), raw=frame.model_dump_json().encode(),
                           topic="celery:" + SERVICE, partition=-1, offset=frame.index, key=frame.stream_id,
                           service=SERVICE)

    def run(self, task: InferenceTask) -> InferenceResult | DeadLetter:
        outcome = self.run_batch([task])
        return outcome.results[0] if outcome.results else outcome.dead_letters[0]

    def execute_batch(self, kwargs: Mapping[str, Any]) -> BatchOutcome:
        """The batch task body: validate, run, count the outcome. Raises PermanentTaskError for kwargs that
        are no batch (acked: they can never succeed) and StoppedError when asked to stop (requeued)."""
        batch = self._kwargs(InferenceBatch, kwargs, "batch task")
        return self._counted(lambda: self.run_batch(batch.frames), f"batch of {len(batch.frames)}")

    def execute(self, kwargs: Mapping[str, Any]) -> InferenceResult | DeadLetter:
        """The one-frame task body (kwargs: an InferenceTask)."""
        task = self._kwargs(InferenceTask, kwargs, "task")
        return self._counted(lambda: self.run(task), f"{task.stream_id}#{task.index}")

    def _kwargs(self, model: type[M], kwargs: Mapping[str, Any], what: str) -> M:
        """The task's kwargs as `model`; kwargs that are no such thing can never succeed: PermanentTaskError
        (the task is acked, and its kwargs logged)."""
        try:
            return model.model_validate(dict(kwargs))
        except ValidationError as exc:
            self.metrics.tasks.labels(STATUS_INVALID).inc()
            log.error("invalid %s kwargs, dropped: %s", what, exc)
            raise PermanentTaskError(f"invalid {what} kwargs: {exc}") from exc

    def _counted(self, action: Callable[[], T], what: str) -> T:
        try:
            out = action()
        except StoppedError:
            self.metrics.tasks.labels(STATUS_REQUEUED).inc()
            log.warning("%s: stopping before it was done; it goes back to its queue", what)
            raise
        except Exception:
            self.metrics.tasks.labels(STATUS_PERMANENT).inc()
            log.exception("%s failed unexpectedly", what)
            raise
        self.metrics.tasks.labels(STATUS_SUCCESS).inc()
        return out


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
