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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol

import aiohttp
import msgspec
from aiokafka import ConsumerRecord, TopicPartition

from smap_shared.model.contract import INPUTS, OUTPUTS, Tensor
from smap_shared.model.rules import ALARM_CAUSES
from smap_shared.schemas import InferenceResult, sensor_order
from smap_shared.settings import ConsumerSettings
from smap_shared.streaming.app import lag_gauge, run_batches
from smap_shared.streaming.kafka import (
    SHUTDOWN_STEP_TIMEOUT_S,
    AckedSender,
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


_json = msgspec.json.Encoder()


def _float_texts(values: list[float]) -> list[str]:
    """The shortest text that round-trips each float64 exactly, as _num, ~5x faster for a list (msgspec
    formats in C; a result has 75 per-sensor values). Finite values only (a result holds no others)."""
    return _json.encode(values).decode()[1:-1].split(",") if values else []


def timestamp_ms(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)


#: The series of a result: the model's tensors that declare a metric (smap_shared/model/contract.py), the
#: frame's values (input_data) per sensor, and what only the result knows (latency, ground truth).
_SCALARS = [o for o in OUTPUTS if o.metric and not o.per_sensor]
_PER_SENSOR = [(t.metric, "sensor_values" if t.name == "input_data" else t.name)
               for t in (*INPUTS, *OUTPUTS) if t.metric and t.per_sensor]


def _scalar_lines(o: Tensor, value: object, series: _StreamSeries, ts: int) -> list[str]:
    base = series.base
    if o.per_cause:  # one 0/1 series per cause, so PromQL can ask which alarms a step or a quiet value raised
        bits = int(value)  # type: ignore[call-overload]
        return [f"{prefix}{int(bool(bits & bit))} {ts}" for bit, prefix in series.per_cause[o.metric]]
    if isinstance(value, bool):
        return [f"{o.metric}{{{base}}} {int(value)} {ts}"]
    if value is None or not math.isfinite(float(value)):  # type: ignore[arg-type]
        return []  # e.g. detector_signal of results from before it existed
    return [f"{o.metric}{{{base}}} {_num(float(value))} {ts}"]  # type: ignore[arg-type]


@dataclass(frozen=True)
class _StreamSeries:
    """The label part of every series of one stream, rendered once (a result has ~110 lines)."""

    base: str  # satellite_id="..",entity=".."
    sensors: tuple[str, ...]  # in sensor order
    per_sensor: tuple[tuple[str, ...], ...]  # per _PER_SENSOR metric: 'metric{labels,sensor=".."} ' per sensor
    ground_truth: tuple[str, ...]  # 'smap_sensor_ground_truth{...} ' per sensor
    per_cause: Mapping[str, tuple[tuple[int, str], ...]]  # per cause metric: (bit, 'metric{labels,cause=".."} ')


@lru_cache(maxsize=1 << 16)  # one entry per stream (x its sensor key set): 1,000 streams use 1,000
def _stream_series(satellite_id: str, entity: str, keys: tuple[str, ...]) -> _StreamSeries:
    stream = {"satellite_id": satellite_id, "entity": entity}
    sensors = sensor_order(keys)
    labels = [_labels({**stream, "sensor": s}) for s in sensors]
    return _StreamSeries(
        base=_labels(stream),
        sensors=sensors,
        per_sensor=tuple(tuple(f"{metric}{{{lab}}} " for lab in labels) for metric, _ in _PER_SENSOR),
        ground_truth=tuple(f"smap_sensor_ground_truth{{{lab}}} " for lab in labels),
        per_cause={o.metric: tuple((bit, f"{o.metric}{{{_labels({**stream, 'cause': name})}}} ")
                                   for bit, name in ALARM_CAUSES.items()) for o in _SCALARS if o.per_cause},
    )


def result_lines(result: InferenceResult) -> list[str]:
    """The Prometheus text lines of one result, stamped with the frame's timestamp (ms)."""
    ts = timestamp_ms(result.timestamp)
    tail = f" {ts}"
    series = _stream_series(result.satellite_id, result.entity, tuple(result.sensor_values))
    base = series.base
    lines = [line for o in _SCALARS for line in _scalar_lines(o, getattr(result, o.name), series, ts)]
    lines.append(f"smap_inference_time_ms{{{base}}} {_num(result.inference_time_ms)}{tail}")
    labels = result.ground_truth_labels
    if labels:
        lines.append(f"smap_ground_truth_anomaly{{{base}}} {max(labels.values())}{tail}")
    sensors = series.sensors
    for prefixes, (_, field_name) in zip(series.per_sensor, _PER_SENSOR, strict=True):
        values: Mapping[str, float] = getattr(result, field_name)
        texts = _float_texts([values[s] for s in sensors])
        lines.extend([f"{prefix}{text}{tail}" for prefix, text in zip(prefixes, texts, strict=True)])
    lines.extend([f"{prefix}{labels[s]}{tail}" for prefix, s in zip(series.ground_truth, sensors, strict=True)
                  if s in labels])
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


class VictoriaSink:
    """The consumer's BatchSink: `add` turns a record into its lines (or its dead letter), `flush` imports the
    lines, retrying with capped backoff while VictoriaMetrics is down (nothing is committed meanwhile and
    consumption pauses: backpressure)."""

    def __init__(
        self, importer: Importer, handler: ResultHandler, stop: asyncio.Event, *,
        backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.importer = importer
        self.handler = handler
        self.stop = stop
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.lines: list[str] = []
        self.metrics = consumer_metrics()
        self.lines_written = 0
        self.imports = 0

    async def add(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        lines = None if self.stop.is_set() else await self.handler.lines_of(record)
        if lines is None:  # stopped: this record and later ones are redelivered from here
            return False
        self.lines.extend(lines)
        return True

    async def _import(self) -> None:
        started = time.perf_counter()
        try:
            await self.importer.import_lines(self.lines)
        except Exception:
            self.metrics.import_failures.inc()
            raise
        self.metrics.import_latency.observe(time.perf_counter() - started)

    async def flush(self) -> bool:
        """Import the pending lines (retrying until accepted or stopped). False when stopped before
        VictoriaMetrics accepted: the lines stay pending and their records uncommitted."""
        if self.lines:
            what = f"VictoriaMetrics import of {len(self.lines)} lines"
            ok = await retry_until_done(self._import, self.stop, what, backoff_s=self.backoff_s,
                                        backoff_max_s=self.backoff_max_s)
            if not ok:
                return False
            self.metrics.lines_written.inc(len(self.lines))
            self.lines_written += len(self.lines)
            self.imports += 1
        self.lines = []
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
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms, fetch_min_bytes=settings.kafka_fetch_min_bytes,
        max_poll_records=settings.consumer_batch_max,
    )
    producer = await start_producer(settings.kafka_bootstrap_servers, client_id=SERVICE)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IMPORT_TIMEOUT_S))
    importer = importer or VictoriaImporter(settings.victoria_url, session)
    handler = ResultHandler(results_dlq_topic(settings), producer, stop)

    sink = VictoriaSink(importer, handler, stop)

    commits = 0
    try:
        await consumer.start()
        log.info("consuming %s as group %s -> %s", settings.results_topic, settings.consumer_group_id,
                 settings.victoria_url)
        # after a stop: one import attempt; what VictoriaMetrics accepted gets committed
        loop_stats = await run_batches(consumer, sink, stop, batch_max=settings.consumer_batch_max,
                                       linger_s=settings.consumer_flush_interval_s,
                                       on_fetched=lag_gauge(consumer, metrics.lag),
                                       final_flush_timeout_s=IMPORT_TIMEOUT_S + SHUTDOWN_STEP_TIMEOUT_S)
        commits = loop_stats.commits
    finally:
        await settle(consumer.stop(), "closing the consumer")
        await settle(producer.stop(), "closing the producer")
        await settle(session.close(), "closing the HTTP session")
    stats = handler.stats
    stats.lines_written, stats.commits = sink.lines_written, commits
    log.info("consumer stopped: %d results, %d dead letters, %d lines written", stats.results,
             stats.dead_lettered, stats.lines_written)
    return stats
