"""Prometheus metrics of each service, registered lazily so a process only exposes the metrics of the
service(s) it runs (the default registry is process-wide; the cache makes each group register once)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

from smap_shared.streaming.validation import REASON_KINDS

#: Final status of a worker task.
WORKER_STATUSES = ("success", "invalid", "permanent_error", "requeued")

#: Latency buckets (seconds) fitting a local chain: sub-millisecond to tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class SimulatorMetrics:
    frames_sent: Counter
    send_latency: Histogram
    active_streams: Gauge


@dataclass(frozen=True)
class TriggerMetrics:
    messages: Counter
    dead_letters: Counter
    publish_latency: Histogram
    publish_retries: Counter
    commits: Counter
    holds: Counter
    batch_frames: Histogram
    lag: Gauge


@dataclass(frozen=True)
class WorkerMetrics:
    tasks: Counter
    inference_latency: Histogram
    kafka_publish_latency: Histogram
    batch_latency: Histogram
    retries: Counter
    blocked_seconds: Counter
    blocked: Gauge
    frames: Counter


@dataclass(frozen=True)
class ConsumerMetrics:
    messages: Counter
    dead_letters: Counter
    lines_written: Counter
    import_latency: Histogram
    import_failures: Counter
    lag: Gauge


def _init_labels(metric: Counter, *values: str) -> None:
    """Create the children up front, so each series is exported (as 0) before its first event."""
    for value in values:
        metric.labels(value)


@cache
def simulator_metrics() -> SimulatorMetrics:
    return SimulatorMetrics(
        frames_sent=Counter(
            "smap_simulator_frames_sent", "Telemetry frames acknowledged by Kafka", ["satellite_id", "entity"]
        ),
        send_latency=Histogram(
            "smap_simulator_tick_send_seconds", "Time for one tick's frames to be acknowledged",
            buckets=LATENCY_BUCKETS,
        ),
        active_streams=Gauge("smap_simulator_active_streams", "Streams that still have frames to send"),
    )


@cache
def trigger_metrics() -> TriggerMetrics:
    metrics = TriggerMetrics(
        messages=Counter("smap_trigger_messages", "Telemetry messages handled", ["outcome"]),
        dead_letters=Counter("smap_trigger_dead_letters", "Invalid telemetry sent to the DLQ", ["reason"]),
        publish_latency=Histogram(
            "smap_trigger_publish_seconds", "Celery publish incl. the RabbitMQ confirm",
            buckets=LATENCY_BUCKETS,
        ),
        publish_retries=Counter("smap_trigger_publish_retries", "Failed Celery publishes retried in place"),
        commits=Counter("smap_trigger_commits", "Kafka offset commits"),
        holds=Counter("smap_trigger_holds", "Lingers extended because a shard's queue still held a task"),
        batch_frames=Histogram("smap_trigger_batch_frames", "Frames per published task",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)),
        lag=Gauge("smap_trigger_lag", "Messages behind the partition's high watermark", ["partition"]),
    )
    _init_labels(metrics.messages, "published", "dead_letter")
    _init_labels(metrics.dead_letters, *REASON_KINDS)
    return metrics


@cache
def worker_metrics() -> WorkerMetrics:
    metrics = WorkerMetrics(
        tasks=Counter("smap_worker_tasks", "Inference tasks by final status", ["status"]),
        inference_latency=Histogram(
            "smap_worker_inference_seconds", "Triton inference call (successful attempt)",
            buckets=LATENCY_BUCKETS,
        ),
        kafka_publish_latency=Histogram(
            "smap_worker_kafka_publish_seconds", "Result publish until Kafka acked", buckets=LATENCY_BUCKETS
        ),
        batch_latency=Histogram(
            "smap_worker_batch_seconds", "A task's frames from received to results acked by Kafka",
            buckets=LATENCY_BUCKETS,
        ),
        retries=Counter("smap_worker_retries", "Transient failures retried in place", ["stage"]),
        blocked_seconds=Counter(
            "smap_worker_blocked_seconds", "Seconds the shard waited on a transient fault", ["stage"]
        ),
        blocked=Gauge("smap_worker_blocked", "1 while the shard is blocked on a transient fault"),
        frames=Counter("smap_worker_frames", "Frames finished, by outcome", ["outcome"]),
    )
    _init_labels(metrics.tasks, *WORKER_STATUSES)
    _init_labels(metrics.retries, "triton", "kafka")
    _init_labels(metrics.blocked_seconds, "triton", "kafka")
    _init_labels(metrics.frames, "result", "dead_letter")
    return metrics


@cache
def consumer_metrics() -> ConsumerMetrics:
    metrics = ConsumerMetrics(
        messages=Counter("smap_consumer_messages", "Inference results consumed", ["outcome"]),
        dead_letters=Counter("smap_consumer_dead_letters", "Invalid results sent to the DLQ", ["reason"]),
        lines_written=Counter("smap_consumer_lines_written", "Prometheus lines accepted by VictoriaMetrics"),
        import_latency=Histogram(
            "smap_consumer_import_seconds", "VictoriaMetrics import request", buckets=LATENCY_BUCKETS
        ),
        import_failures=Counter("smap_consumer_import_failures", "Failed VictoriaMetrics imports (retried)"),
        lag=Gauge("smap_consumer_lag", "Messages behind the partition's high watermark", ["partition"]),
    )
    _init_labels(metrics.messages, "valid", "invalid")
    _init_labels(metrics.dead_letters, *REASON_KINDS)
    return metrics
