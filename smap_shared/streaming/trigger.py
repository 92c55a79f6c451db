"""smap-inference-trigger: telemetry frames from Kafka -> one Celery inference task each, on the stream's
shard queue; invalid frames -> the dead-letter topic.

Offsets are committed only once each record's effect is durable (the task confirmed by RabbitMQ, or the
dead letter acked by Kafka): at-least-once, and the model recognises a redelivered index.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition
from celery import Celery

from smap_shared.data import DataSource, default_source
from smap_shared.fleet import Fleet, load_fleet
from smap_shared.routing import TASK_NAME, queue_for
from smap_shared.schemas import InferenceTask
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.celery_app import make_celery_app
from smap_shared.streaming.kafka import (
    AckedSender,
    ContiguousFetcher,
    commit,
    key_text,
    make_consumer,
    settle,
    start_producer,
)
from smap_shared.streaming.metrics import trigger_metrics
from smap_shared.streaming.retry import retry_until_done
from smap_shared.streaming.validation import Invalid, dead_letter, entity_widths, validate_telemetry

log = logging.getLogger(__name__)

SERVICE = "smap-inference-trigger"
POLL_TIMEOUT_MS = 200


class TaskPublisher(Protocol):
    def publish(self, task: InferenceTask, queue: str) -> None:
        """Blocking: returns once the broker has confirmed the task message."""


class CeleryPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, task: InferenceTask, queue: str) -> None:
        self.app.send_task(TASK_NAME, kwargs=task.model_dump(mode="json"), queue=queue)


@dataclass
class TriggerStats:
    published: int = 0
    dead_lettered: int = 0
    commits: int = 0


class TelemetryHandler:
    """Handles one record at a time: validate, then publish the task or the dead letter."""

    def __init__(
        self, settings: TriggerSettings, fleet: Fleet, widths: Mapping[str, int], publisher: TaskPublisher,
        producer: AckedSender, executor: ThreadPoolExecutor, stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.widths = widths
        self.publisher = publisher
        self.producer = producer
        # one thread: Celery publishes block, and one publishing thread keeps the records' order
        self.executor = executor
        self.stop = stop
        self.stats = TriggerStats()
        self.metrics = trigger_metrics()

    async def handle(self, record: ConsumerRecord) -> bool:
        """True once the record's effect is durable; False when stopped before that."""
        checked = validate_telemetry(record.value, self.fleet, self.widths)
        if isinstance(checked, Invalid):
            return await self._dead_letter(record, checked)
        task = InferenceTask.from_telemetry(checked)
        queue = queue_for(task.stream_id, self.settings.inference_shards)
        loop = asyncio.get_running_loop()

        async def publish() -> None:
            started = time.perf_counter()
            await loop.run_in_executor(self.executor, self.publisher.publish, task, queue)
            self.metrics.publish_latency.observe(time.perf_counter() - started)

        ok = await retry_until_done(
            publish, self.stop, f"publishing {task.stream_id}#{task.index} to {queue}",
            self.metrics.publish_retries.inc,
        )
        if ok:
            self.stats.published += 1
            self.metrics.messages.labels("published").inc()
        return ok

    async def _dead_letter(self, record: ConsumerRecord, invalid: Invalid) -> bool:
        key = key_text(record)
        log.warning("dead letter %s[%d]@%d (key %s): %s", record.topic, record.partition, record.offset, key,
                    invalid.reason)
        letter = dead_letter(invalid, raw=record.value, topic=record.topic, partition=record.partition,
                             offset=record.offset, key=key, service=SERVICE)
        value = letter.model_dump_json().encode()

        async def send() -> None:
            await self.producer.send_and_wait(self.settings.dlq_topic, value=value, key=record.key)

        ok = await retry_until_done(send, self.stop, f"dead letter to {self.settings.dlq_topic}")
        if ok:
            self.stats.dead_lettered += 1
            self.metrics.messages.labels("dead_letter").inc()
            self.metrics.dead_letters.labels(invalid.kind).inc()
        return ok


async def run_trigger(
    settings: TriggerSettings, stop: asyncio.Event, *, publisher: TaskPublisher | None = None,
    fleet: Fleet | None = None, source: DataSource | None = None,
) -> TriggerStats:
    """The trigger service: consume until `stop` is set, then commit what was handled and close."""
    trigger_metrics()  # exported from the start, before the first message
    fleet = fleet or load_fleet(settings.fleet_file)
    widths = entity_widths(fleet, source or default_source())
    own_app: Celery | None = None
    if publisher is None:
        own_app = make_celery_app(settings, main=SERVICE)
        publisher = CeleryPublisher(own_app)
    consumer = make_consumer(
        settings.telemetry_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.trigger_group_id, client_id=SERVICE,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")
    producer = await start_producer(settings.kafka_bootstrap_servers, client_id=SERVICE)
    handler = TelemetryHandler(settings, fleet, widths, publisher, producer, executor, stop)
    handled: dict[TopicPartition, int] = {}
    try:
        await consumer.start()
        fetcher = ContiguousFetcher(consumer)
        log.info("consuming %s as group %s; %d shard queues", settings.telemetry_topic,
                 settings.trigger_group_id, settings.inference_shards)
        while not stop.is_set():
            batches = await fetcher.getmany(timeout_ms=POLL_TIMEOUT_MS)
            for tp, records in batches.items():
                for record in records:
                    # a stop leaves the rest for the next owner of the partition (redelivered from there)
                    if stop.is_set() or not await handler.handle(record):
                        break
                    handled[tp] = record.offset + 1
            if handled and await commit(consumer, handled):
                handler.stats.commits += 1
                handler.metrics.commits.inc()
            handled.clear()
    finally:
        await settle(commit(consumer, handled), "commit")  # what was fully handled before a stop mid-batch
        await settle(consumer.stop(), "closing the consumer")
        await settle(producer.stop(), "closing the producer")
        executor.shutdown(wait=True)
        if own_app is not None:
            own_app.close()
    log.info("trigger stopped: %d published, %d dead letters", handler.stats.published,
             handler.stats.dead_lettered)
    return handler.stats
