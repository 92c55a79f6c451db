"""smap-victoria-consumer: inference results from Kafka -> VictoriaMetrics (Prometheus text import).

Results are batched (consumer_batch_max messages or consumer_flush_interval_s, whichever first); a batch's
offsets are committed only after VictoriaMetrics accepted it (2xx). While VictoriaMetrics is down the batch
is retried with capped exponential backoff, nothing is committed and consumption pauses (backpressure).
A redelivered batch rewrites the same samples (same timestamps), which VictoriaMetrics deduplicates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiohttp
from aiokafka import ConsumerRecord, TopicPartition

from smap_shared.model.rules import ALARM_CAUSES
from smap_shared.schemas import SENSOR_KEY, InferenceResult
from smap_shared.settings import ConsumerSettings
from smap_shared.streaming.kafka import (
    SHUTDOWN_STEP_TIMEOUT_S,
    AckedSender,
    ContiguousFetcher,
    commit,
    key_text,
    make_consumer,
    settle,
    start_producer,
)
from smap_shared.streaming.metrics import consumer_metrics
from smap_shared.streaming.retry import retry_until_done
from smap_shared.streaming.validation import Invalid, dead_letter, validate_result

log = logging.getLogger(__name__)

SERVICE = "smap-victoria-consumer"
IMPORT_PATH = "/api/v1/import/prometheus"
IMPORT_TIMEOUT_S = 10.0
BACKOFF_S = 0.2
BACKOFF_MAX_S = 10.0
POLL_TIMEOUT_MS = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def results_dlq_topic(settings: ConsumerSettings) -> str:
    """`smap-inference-results-dlq` for the default results topic."""
    return f"{settings.results_topic}-dlq"


# ---------------------------------------------------------------- Prometheus text lines


def escape_label(value: str) -> str:
    """Prometheus text format label value escaping: backslash, double quote, line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items())


def _num(value: float) -> str:
    return repr(float(value))  # shortest text that round-trips the float64 exactly


def timestamp_ms(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def _sensor_order(key: str) -> tuple[int, str]:
    m = SENSOR_KEY.match(key)
    return (int(m.group(1)), key) if m else (1 << 30, key)


def result_lines(result: InferenceResult) -> list[str]:
    """The Prometheus text lines of one result, stamped with the frame's timestamp (ms)."""
    ts = timestamp_ms(result.timestamp)
    stream = {"satellite_id": result.satellite_id, "entity": result.entity}
    base = _labels(stream)
    lines = [
        f"smap_anomaly_score{{{base}}} {_num(result.anomaly_score)} {ts}",
        f"smap_anomaly_detected{{{base}}} {int(result.anomaly_detected)} {ts}",
        f"smap_inference_time_ms{{{base}}} {_num(result.inference_time_ms)} {ts}",
        f"smap_anomaly_threshold{{{base}}} {_num(result.threshold)} {ts}",
    ]
    if result.detector_signal is not None and math.isfinite(result.detector_signal):
        # the rule's own signal: the series to draw smap_anomaly_threshold against
        lines.append(f"smap_detector_signal{{{base}}} {_num(result.detector_signal)} {ts}")
    # one 0/1 series per cause, so PromQL can ask which alarms a step or a quiet value raised
    lines.extend(
        f"smap_alarm_cause{{{_labels({**stream, 'cause': name})}}} {int(bool(result.alarm_cause & bit))} {ts}"
        for bit, name in ALARM_CAUSES.items()
    )
    labels = result.ground_truth_labels
    if labels:
        lines.append(f"smap_ground_truth_anomaly{{{base}}} {max(labels.values())} {ts}")
    sensors = sorted(result.sensor_values, key=_sensor_order)
    per_sensor = {
        "smap_sensor_value": result.sensor_values,
        "smap_sensor_reconstruction": result.reconstruction,
        "smap_sensor_error": result.sensor_error,
    }
    sensor_labels = {sensor: _labels({**stream, "sensor": sensor}) for sensor in sensors}
    for metric, values in per_sensor.items():
        lines.extend(f"{metric}{{{sensor_labels[s]}}} {_num(values[s])} {ts}" for s in sensors)
    lines.extend(
        f"smap_sensor_ground_truth{{{sensor_labels[s]}}} {labels[s]} {ts}" for s in sensors if s in labels
    )
    return lines


# ---------------------------------------------------------------- import + batching


class VictoriaImportError(RuntimeError):
    """VictoriaMetrics did not accept the import (non-2xx answer)."""


class Importer(Protocol):
    async def import_lines(self, lines: list[str]) -> None:
        """Returns once VictoriaMetrics accepted the lines; raises otherwise."""


class VictoriaImporter:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.url = base_url.rstrip("/") + IMPORT_PATH
        self.session = session

    async def import_lines(self, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        async with self.session.post(self.url, data=body) as resp:
            if not 200 <= resp.status < 300:
                text = (await resp.text())[:500]
                raise VictoriaImportError(f"VictoriaMetrics answered {resp.status}: {text}")


@dataclass
class PendingBatch:
    lines: list[str] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read, per partition
    messages: int = 0
    first_at: float | None = None


class BatchWriter:
    """Accumulates lines and their records' offsets; a flush imports the lines, then commits the offsets."""

    def __init__(
        self, importer: Importer, commit_offsets: Callable[[Mapping[TopicPartition, int]], Awaitable[bool]],
        stop: asyncio.Event, *, batch_max: int, flush_interval_s: float,
        backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.importer = importer
        self.commit_offsets = commit_offsets
        self.stop = stop
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.pending = PendingBatch()
        self.metrics = consumer_metrics()
        self.lines_written = 0
        self.commits = 0

    def add(self, tp: TopicPartition, offset: int, lines: list[str]) -> None:
        batch = self.pending
        if batch.first_at is None:
            batch.first_at = time.monotonic()
        batch.lines.extend(lines)
        batch.offsets[tp] = offset + 1
        batch.messages += 1

    def seconds_until_due(self) -> float | None:
        """None: nothing pending; 0: flush now."""
        batch = self.pending
        if batch.first_at is None:
            return None
        if batch.messages >= self.batch_max:
            return 0.0
        return max(0.0, batch.first_at + self.flush_interval_s - time.monotonic())

    async def _import(self, lines: list[str]) -> None:
        started = time.perf_counter()
        await self.importer.import_lines(lines)
        self.metrics.import_latency.observe(time.perf_counter() - started)

    async def flush(self) -> bool:
        """Import the pending lines (retrying until accepted or stopped), then commit their offsets.
        False when stopped before VictoriaMetrics accepted: the batch stays pending and uncommitted."""
        batch = self.pending
        if batch.first_at is None:
            return True
        if batch.lines:
            delay = self.backoff_s
            while True:
                try:
                    await self._import(batch.lines)
                    break
                except (aiohttp.ClientError, OSError, TimeoutError, VictoriaImportError) as exc:
                    self.metrics.import_failures.inc()
                    log.warning("VictoriaMetrics import of %d lines failed (%r); retrying in %.1f s",
                                len(batch.lines), exc, delay)
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                    return False
                except TimeoutError:
                    delay = min(delay * 2, self.backoff_max_s)
            self.metrics.lines_written.inc(len(batch.lines))
            self.lines_written += len(batch.lines)
        self.pending = PendingBatch()
        if await self.commit_offsets(batch.offsets):
            self.commits += 1
        return True


# ---------------------------------------------------------------- the service


@dataclass
class ConsumerStats:
    results: int = 0
    dead_lettered: int = 0
    lines_written: int = 0
    commits: int = 0


class ResultHandler:
    """One record -> its lines, or a dead letter (then no lines)."""

    def __init__(self, dlq_topic: str, producer: AckedSender, stop: asyncio.Event) -> None:
        self.dlq_topic = dlq_topic
        self.producer = producer
        self.stop = stop
        self.metrics = consumer_metrics()
        self.stats = ConsumerStats()

    async def lines_of(self, record: ConsumerRecord) -> list[str] | None:
        """The record's lines ([] for a dead letter); None when stopped before the dead letter was acked."""
        checked = validate_result(record.value)
        if not isinstance(checked, Invalid):
            self.stats.results += 1
            self.metrics.messages.labels("valid").inc()
            return result_lines(checked)
        key = key_text(record)
        log.warning("invalid result %s[%d]@%d (key %s): %s", record.topic, record.partition, record.offset,
                    key, checked.reason)
        letter = dead_letter(checked, raw=record.value, topic=record.topic, partition=record.partition,
                             offset=record.offset, key=key, service=SERVICE)
        value = letter.model_dump_json().encode()

        async def send() -> None:
            await self.producer.send_and_wait(self.dlq_topic, value=value, key=record.key)

        if not await retry_until_done(send, self.stop, f"dead letter to {self.dlq_topic}"):
            return None
        self.stats.dead_lettered += 1
        self.metrics.messages.labels("invalid").inc()
        self.metrics.dead_letters.labels(checked.kind).inc()
        return []


async def run_consumer(
    settings: ConsumerSettings, stop: asyncio.Event, *, importer: Importer | None = None,
) -> ConsumerStats:
    """The consumer service: consume until `stop` is set, then flush what is pending (one attempt),
    commit what VictoriaMetrics accepted, and close."""
    metrics = consumer_metrics()  # exported from the start, before the first message
    consumer = make_consumer(
        settings.results_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group_id, client_id=SERVICE,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_records=settings.consumer_batch_max,
    )
    producer = await start_producer(settings.kafka_bootstrap_servers, client_id=SERVICE)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IMPORT_TIMEOUT_S))
    importer = importer or VictoriaImporter(settings.victoria_url, session)
    handler = ResultHandler(results_dlq_topic(settings), producer, stop)

    async def commit_offsets(offsets: Mapping[TopicPartition, int]) -> bool:
        return await commit(consumer, offsets)

    writer = BatchWriter(importer, commit_offsets, stop, batch_max=settings.consumer_batch_max,
                         flush_interval_s=settings.consumer_flush_interval_s)
    try:
        await consumer.start()
        fetcher = ContiguousFetcher(consumer)
        log.info("consuming %s as group %s -> %s", settings.results_topic, settings.consumer_group_id,
                 settings.victoria_url)
        while not stop.is_set():
            due = writer.seconds_until_due()
            timeout_ms = POLL_TIMEOUT_MS if due is None else min(POLL_TIMEOUT_MS, int(due * 1000))
            room = settings.consumer_batch_max - writer.pending.messages
            batches = await fetcher.getmany(timeout_ms=timeout_ms, max_records=max(room, 1))
            for tp, records in batches.items():
                for record in records:
                    lines = None if stop.is_set() else await handler.lines_of(record)
                    if lines is None:  # stopped: this record and later ones are redelivered from here
                        break
                    writer.add(tp, record.offset, lines)
                highwater = consumer.highwater(tp)
                if highwater is not None and records:
                    metrics.lag.labels(str(tp.partition)).set(max(0, highwater - records[-1].offset - 1))
            if writer.seconds_until_due() == 0.0:
                await writer.flush()
    finally:
        # after a stop: one import attempt; what VictoriaMetrics accepted gets committed
        await settle(writer.flush(), "final flush", IMPORT_TIMEOUT_S + SHUTDOWN_STEP_TIMEOUT_S)
        await settle(consumer.stop(), "closing the consumer")
        await settle(producer.stop(), "closing the producer")
        await settle(session.close(), "closing the HTTP session")
    stats = handler.stats
    stats.lines_written, stats.commits = writer.lines_written, writer.commits
    log.info("consumer stopped: %d results, %d dead letters, %d lines written", stats.results,
             stats.dead_lettered, stats.lines_written)
    return stats
