"""smap-inference-trigger: telemetry frames from Kafka -> micro-batched Celery tasks, one per shard queue;
invalid frames -> the dead-letter topic.

Records are read with `getmany` and validated one by one; valid frames are grouped by the shard of their
stream, in the order read (so each stream's frames keep their order), and each shard's group is published as
one task `smap_analysis.tasks.run_omnianomaly_batch` when TRIGGER_BATCH_MAX frames are pending or the oldest
has waited TRIGGER_LINGER_MS -- unless that shard's worker is still running a task or its queue still holds
one (TRIGGER_HOLD_WHILE_QUEUED): then the batch grows until the worker is free, the batch is full or
TRIGGER_HOLD_MAX_MS passed, so tasks grow with the load. Offsets are committed only once every task and dead
letter covering them is durable (RabbitMQ confirmed the task, Kafka acked the letter): at-least-once, and the
model recognises a redelivered index. A RabbitMQ outage blocks the trigger (retried in place, nothing
committed), never drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition
from celery import Celery
from kombu.connection import Connection

from smap_shared.data import DataSource, default_source
from smap_shared.fleet import Fleet, load_fleet
from smap_shared.routing import BATCH_TASK_NAME, ShardMap, queue_name
from smap_shared.schemas import InferenceBatch, InferenceTask
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.app import lag_gauge, run_batches
from smap_shared.streaming.celery_app import ShardBusy, make_celery_app
from smap_shared.streaming.kafka import AckedSender, key_text, make_consumer, settle, start_producer
from smap_shared.streaming.metrics import trigger_metrics
from smap_shared.streaming.retry import retry_until_done
from smap_shared.streaming.validation import (
    Invalid,
    SaneRange,
    dead_letter,
    entity_widths,
    sane_ranges,
    validate_telemetry,
)

log = logging.getLogger(__name__)

SERVICE = "smap-inference-trigger"


class TaskPublisher(Protocol):
    def publish(self, batch: InferenceBatch, queue: str) -> None:
        """Blocking: returns once the broker has confirmed the task message."""

    def busy(self, queues: Sequence[str]) -> bool:
        """Blocking: a worker of one of `queues` is running a task, or a task waits in one (False when that
        cannot be told)."""

    def close(self) -> None:
        """Blocking: releases what the publisher holds (called once, on the trigger's executor, at the end)."""


class CeleryPublisher:
    def __init__(self, app: Celery, flags: ShardBusy | None = None) -> None:
        self.app = app
        self.flags = flags
        self._probe: Connection | None = None

    def busy(self, queues: Sequence[str]) -> bool:
        """The workers' busy flags first (one Redis round trip); only when none is set, the queues' ready
        counts (a task published while its worker was between tasks)."""
        if self.flags is not None and any(self.flags.busy(queues)):
            return True
        return any(self.waiting(q) > 0 for q in queues)

    def publish(self, batch: InferenceBatch, queue: str) -> None:
        self.app.send_task(BATCH_TASK_NAME, kwargs=batch.model_dump(mode="json"), queue=queue)

    def waiting(self, queue: str) -> int:
        """Ready messages of `queue` (a passive declare on a connection of its own). A probe only: any fault
        answers 0, so the trigger publishes as it would without it -- it never holds on a broker fault."""
        try:
            if self._probe is None:
                self._probe = self.app.connection_for_read(connect_timeout=2)
                self._probe.connect()
            ok = self._probe.default_channel.queue_declare(queue=queue, passive=True)
            return int(ok.message_count)
        except Exception as exc:  # see above: the publish reports the broker's faults
            log.debug("queue probe of %s failed: %r", queue, exc)
            self.close()
            return 0

    def close(self) -> None:
        if self.flags is not None:
            self.flags.close()
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.release()  # type: ignore[no-untyped-call]


def next_task_size(stream_ids: Sequence[str], per_stream: int) -> int:
    """How many of a shard's pending frames (in order) its next task takes: all of them, or those before the
    first frame whose stream already has `per_stream` frames in the task. Guarantee: a task never holds more
    frames of one stream than the model remembers outputs of (its STATE_HISTORY), so a task redelivered
    after a crash mid-way is answered from that memory row by row instead of being refused as too old.

    >>> next_task_size(["a", "b", "a", "a", "b"], 2)
    3
    >>> next_task_size(["a", "b", "a"], 2), next_task_size([], 2)
    (3, 0)
    """
    counts: dict[str, int] = {}
    for i, sid in enumerate(stream_ids):
        counts[sid] = counts.get(sid, 0) + 1
        if counts[sid] > per_stream:
            return i
    return len(stream_ids)


@dataclass
class TriggerStats:
    published: int = 0  # frames
    tasks: int = 0
    dead_lettered: int = 0
    commits: int = 0


class TelemetrySink:
    """The trigger's BatchSink: `add` validates one record into its shard's pending batch (or schedules its
    dead letter), `flush` publishes every shard's batch and waits for the dead letters."""

    def __init__(
        self, settings: TriggerSettings, fleet: Fleet, widths: Mapping[str, int], publisher: TaskPublisher,
        producer: AckedSender, executor: ThreadPoolExecutor, stop: asyncio.Event,
        ranges: Mapping[str, SaneRange] | None = None,
    ) -> None:
        self.settings = settings
        self.ranges = ranges
        self.fleet = fleet
        self.shards = ShardMap(fleet.deployed, settings.inference_shards)
        self.widths = widths
        self.publisher = publisher
        self.producer = producer
        # one thread: Celery publishes block, and one publishing thread keeps the batches' order
        self.executor = executor
        self.stop = stop
        self.pending: dict[int, list[InferenceTask]] = {}
        self.letters: list[tuple[bytes | None, bytes, str]] = []
        self.stats = TriggerStats()
        self.metrics = trigger_metrics()

    async def add(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        checked = validate_telemetry(record.value, self.fleet, self.widths, self.ranges)
        if isinstance(checked, Invalid):
            key = key_text(record)
            log.warning("dead letter %s[%d]@%d (key %s): %s", record.topic, record.partition, record.offset, key,
                        checked.reason)
            letter = dead_letter(checked, raw=record.value, topic=record.topic, partition=record.partition,
                                 offset=record.offset, key=key, service=SERVICE)
            self.letters.append((record.key, letter.model_dump_json().encode(), checked.kind))
            return True
        task = InferenceTask.from_telemetry(checked)
        self.pending.setdefault(self.shards.shard(task.satellite_id, task.entity), []).append(task)
        return True

    async def queued_ahead(self) -> bool:
        """The loop's `hold`: True while the worker of a shard with pending frames is still running a task, or
        its queue still holds one (the next task would only wait behind it, so let it grow instead)."""
        if not self.pending:
            return False
        queues = [queue_name(shard) for shard in sorted(self.pending)]
        loop = asyncio.get_running_loop()
        busy: bool = await loop.run_in_executor(self.executor, self.publisher.busy, queues)
        return busy

    async def flush(self) -> bool:
        loop = asyncio.get_running_loop()
        per_stream = self.settings.trigger_stream_frames_max
        for shard in sorted(self.pending):
            queue = queue_name(shard)
            while shard in self.pending:  # usually one task; more when a stream has more than per_stream frames
                pending = self.pending[shard]
                frames = pending[: next_task_size([f.stream_id for f in pending], per_stream)]
                batch = InferenceBatch(frames=frames)

                async def publish(batch: InferenceBatch = batch, queue: str = queue) -> None:
                    started = time.perf_counter()
                    await loop.run_in_executor(self.executor, self.publisher.publish, batch, queue)
                    self.metrics.publish_latency.observe(time.perf_counter() - started)

                if not await retry_until_done(publish, self.stop, f"publishing {len(frames)} frames to {queue}",
                                              self.metrics.publish_retries.inc):
                    return False
                # confirmed: a retry of this flush must not publish it again
                if len(frames) == len(pending):
                    del self.pending[shard]
                else:
                    self.pending[shard] = pending[len(frames):]
                self.stats.published += len(frames)
                self.stats.tasks += 1
                self.metrics.messages.labels("published").inc(len(frames))
                self.metrics.batch_frames.observe(len(frames))
        while self.letters:
            key, value, kind = self.letters[0]

            async def send(key: bytes | None = key, value: bytes = value) -> None:
                await self.producer.send_and_wait(self.settings.dlq_topic, value=value, key=key)

            if not await retry_until_done(send, self.stop, f"dead letter to {self.settings.dlq_topic}"):
                return False
            self.letters.pop(0)
            self.stats.dead_lettered += 1
            self.metrics.messages.labels("dead_letter").inc()
            self.metrics.dead_letters.labels(kind).inc()
        return True


async def run_trigger(
    settings: TriggerSettings, stop: asyncio.Event, *, publisher: TaskPublisher | None = None,
    fleet: Fleet | None = None, source: DataSource | None = None,
) -> TriggerStats:
    """The trigger service: consume until `stop` is set, then commit what was published and close."""
    metrics = trigger_metrics()  # exported from the start, before the first message
    fleet = fleet or load_fleet(settings.fleet_file)
    source = source or default_source()
    widths = entity_widths(fleet, source)
    spans = settings.trigger_plausible_spans
    ranges = sane_ranges(fleet, source, spans) if spans > 0 else None
    own_app: Celery | None = None
    if publisher is None:
        own_app = make_celery_app(settings, main=SERVICE)
        publisher = CeleryPublisher(own_app, ShardBusy(settings.celery_result_backend, settings.celery_broker_url))
    consumer = make_consumer(
        settings.telemetry_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.trigger_group_id, client_id=SERVICE,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms, fetch_min_bytes=settings.kafka_fetch_min_bytes,
        max_poll_records=settings.trigger_batch_max,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")
    producer = await start_producer(settings.kafka_bootstrap_servers, client_id=SERVICE)
    sink = TelemetrySink(settings, fleet, widths, publisher, producer, executor, stop, ranges)

    try:
        await consumer.start()
        log.info("consuming %s as group %s; %d shard queues, batches of <= %d frames or %d ms",
                 settings.telemetry_topic, settings.trigger_group_id, settings.inference_shards,
                 settings.trigger_batch_max, settings.trigger_linger_ms)
        loop_stats = await run_batches(consumer, sink, stop, batch_max=settings.trigger_batch_max,
                                       linger_s=settings.trigger_linger_ms / 1000.0,
                                       on_fetched=lag_gauge(consumer, metrics.lag),
                                       on_commit=metrics.commits.inc, on_hold=metrics.holds.inc,
                                       hold=sink.queued_ahead if settings.trigger_hold_while_queued else None,
                                       hold_max_s=settings.trigger_hold_max_ms / 1000.0)
        sink.stats.commits = loop_stats.commits
    finally:
        await settle(consumer.stop(), "closing the consumer")
        await settle(producer.stop(), "closing the producer")
        executor.submit(publisher.close)
        executor.shutdown(wait=True)
        if own_app is not None:
            own_app.close()
    log.info("trigger stopped: %d frames in %d tasks, %d dead letters", sink.stats.published, sink.stats.tasks,
             sink.stats.dead_lettered)
    return sink.stats
