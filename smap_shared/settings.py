"""One frozen pydantic-settings class per service. Every field is read from the environment variable of
the same name in upper case (e.g. KAFKA_BOOTSTRAP_SERVERS); defaults suit the native single-host mode."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_file=None)

    kafka_bootstrap_servers: str = "localhost:9092"
    telemetry_topic: str = "smap-telemetry"
    results_topic: str = "smap-inference-results"
    dlq_topic: str = "smap-telemetry-dlq"
    fleet_file: Path | None = None  # None: the packaged fleet.toml
    log_level: str = "INFO"
    #: The address every listening socket of a service binds (its API, its /metrics): loopback unless set, so
    #: nothing is reachable from the network by default. The same variable docker compose uses for the host
    #: side of the ports it publishes; inside a container compose sets 0.0.0.0 (the published port decides).
    smap_bind_address: str = "127.0.0.1"


#: Recent outputs each stream keeps to answer a redelivered step (the Triton model's STATE_HISTORY). A
#: redelivered task is recognised only if it holds no more rows of one stream than this, so the trigger never
#: puts more in one task (TriggerSettings.trigger_stream_frames_max).
STATE_HISTORY = 256

#: A reader off the latency path asks for this much per fetch, so its fetch wait, not each arriving record,
#: sets how often it handles a batch.
OFF_PATH_FETCH_MIN_BYTES = 1 << 20


class _KafkaReaderSettings(_Settings):
    """How a service reads Kafka: the broker answers a fetch once `kafka_fetch_min_bytes` wait, or after
    `kafka_fetch_max_wait_ms`. The defaults suit the latency path (trigger, consumer): answered as soon as
    data arrives, and an idle poll held 20 ms (Tansu holds every idle fetch that long). With min_bytes 1 a
    busy topic is fetched as fast as the loop turns (~170 fetches a second at 1,000 frames/s, each a pass of
    the handler); readers off the latency path override both, so that the wait sets their pace
    (benchmarks.md, 2026-12-06)."""

    kafka_fetch_max_wait_ms: int = 20
    kafka_fetch_min_bytes: int = Field(default=1, ge=1)


class _CelerySettings(_Settings):
    celery_broker_url: str = "amqp://guest:guest@localhost:5672//"
    celery_result_backend: str = "redis://localhost:6379/1"
    #: Streams are spread over this many ordered shard queues (one worker process each); every service
    #: that routes or consumes tasks must agree on it.
    inference_shards: int = Field(default=2, ge=1, le=64)


class _AuthSettings(_Settings):
    """Who may do what (smap_shared.auth, docs/security.md): the dashboard and both APIs."""

    #: on: users, roles, API tokens and sessions from PostgreSQL. off: no login, everyone acts as `local-dev`
    #: with every right; refused unless the service binds loopback (local development only).
    smap_auth: Literal["on", "off"] = "on"
    #: PostgreSQL of the alert history (the alert manager's) and, unless AUTH_DATABASE_URL names another, of
    #: the users, tokens, sessions and audit log.
    alert_database_url: str = "postgresql://postgres@127.0.0.1:5432/smap_alerts"
    auth_database_url: str | None = None
    auth_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: Mark the session cookie Secure: set it when the page is served over HTTPS (a TLS reverse proxy).
    auth_cookie_secure: bool = False

    @property
    def users_database_url(self) -> str:
        return self.auth_database_url or self.alert_database_url


class SimulatorSettings(_Settings):
    #: Seconds between frames of one stream: 30 (real SMAP cadence), 5 (the spec's development default),
    #: 0 (as fast as the chain takes it).
    simulator_interval_s: float = Field(default=5.0, ge=0)
    #: When in the interval each stream emits: "spread" -- each satellite at its own phase (satellite k of N
    #: at k/N of the interval, all of its entities together), as independent spacecraft do; "together" --
    #: every stream of the fleet at the start of each interval (the worst burst). Interval 0: together.
    simulator_phase: Literal["spread", "together"] = "spread"
    simulator_start_index: int = Field(default=0, ge=0)
    simulator_max_steps: int | None = Field(default=None, ge=1)  # per stream; None: the whole test split
    simulator_loop: bool = False  # at the end of the split: start over (True) or stop (False)
    simulator_entities: str = ""  # comma-separated filter like "A-1,P-1"; empty: the whole fleet
    smap_data_dir: Path | None = None  # official telemanom layout; None: the vendored copy
    metrics_port: int = 9301


class _TelemetryCheckSettings(_Settings):
    """How a telemetry frame is checked, wherever it enters: the trigger (the topic) and the operation
    server's HTTP ingest (POST /api/smap/telemetry) read the same variable, so both accept the same frames."""

    #: The plausibility gate: a sensor value more than this many train spans outside its train [min, max] is
    #: dead-lettered as implausible (0 switches the gate off).
    trigger_plausible_spans: float = Field(default=10.0, ge=0)


class TriggerSettings(_CelerySettings, _TelemetryCheckSettings, _KafkaReaderSettings):
    trigger_group_id: str = "smap-inference-trigger"
    #: Micro-batches: one Celery task per shard carries at most this many frames, published when it is full
    #: or when its oldest frame has waited trigger_linger_ms, whichever comes first. Under light load the
    #: linger decides (tasks stay small); under load a full task carries ~1024 / 20 rows per model request,
    #: which amortises Triton's per-request cost: 1024 instead of 256 doubled the chain's full speed on 1,000
    #: streams (benchmarks.md, 2026-12-03).
    trigger_batch_max: int = Field(default=1024, ge=1, le=4096)
    #: 5 ms: a satellite's frames arrive in one fetch anyway, and under load the adaptive hold below (not the
    #: linger) makes the batches; 20 -> 5 took 200 streams' p99 from 225 to 152 ms (with the consumer's 10 ms).
    trigger_linger_ms: int = Field(default=5, ge=0, le=10_000)
    #: Adaptive batches: when the linger is due but a shard's worker is still running a task (its busy flag in
    #: the Celery result backend) or its queue still holds one, keep collecting (another linger, up to
    #: trigger_batch_max frames) instead of queueing one more small task behind it. Under load tasks grow by
    #: themselves (Triton's cost is mostly per request); at light load the worker is idle and nothing waits
    #: longer than the linger. A frame is held at most trigger_hold_max_ms past its linger (a worker that is
    #: down must not keep its shard's frames here).
    trigger_hold_while_queued: bool = True
    trigger_hold_max_ms: int = Field(default=1000, ge=0, le=60_000)
    #: A task holds at most this many frames of one stream (more go into the shard's next task): a task that
    #: is redelivered after a crash is recognised step by step only while its rows of a stream are all in the
    #: model's memory of recent outputs. Must not exceed the models' STATE_HISTORY (the default is that).
    trigger_stream_frames_max: int = Field(default=STATE_HISTORY, ge=1)
    metrics_port: int = 9302


class WorkerSettings(_CelerySettings):
    triton_url: str = "localhost:8100"
    triton_timeout_s: float = 10.0
    #: Requests in flight at once (threads, each with its own connection): a batch sends one request per model
    #: present in it. 12 single-row requests on an idle machine: 25 ms with 4, 22 ms with 8, 17 ms with 16;
    #: under full load more threads only add contention (8: full speed 1,652 frames/s against 1,926 before).
    triton_concurrency: int = Field(default=4, ge=1, le=64)
    #: Transient Triton/Kafka failures are retried inside the task, in place, for as long as they last (the
    #: shard blocks; no attempt budget drops a frame), with this backoff doubling up to the maximum. Celery's
    #: retry() would re-queue at the tail, behind later steps.
    inference_retry_backoff_s: float = Field(default=0.2, gt=0)
    inference_retry_backoff_max_s: float = Field(default=5.0, gt=0)
    metrics_port: int = 9310  # shard k serves on metrics_port + k


class ConsumerSettings(_KafkaReaderSettings):
    consumer_group_id: str = "smap-victoria-consumer"
    victoria_url: str = "http://localhost:8428"
    consumer_batch_max: int = Field(default=500, ge=1)
    #: Part of every frame's latency. 10 ms: each import is awaited, so while one is in flight the next batch
    #: gathers in Kafka by itself; a longer linger only adds latency (50 -> 10 ms, benchmarks.md 2026-12-04).
    consumer_flush_interval_s: float = Field(default=0.01, gt=0)
    metrics_port: int = 9304


class TritonSettings(_Settings):
    triton_http_port: int = 8100
    triton_grpc_port: int = 8101
    triton_metrics_port: int = 8102
    triton_model_repository: Path = Path("triton-omnianomaly/models")
    checkpoint_dir: Path = Path("checkpoints")
    #: Redis URL where the models write each stream's state through; empty disables persistence.
    model_state_redis_url: str = "redis://localhost:6379/2"
    #: KIND_GPU when a GPU is visible at generation time, else KIND_CPU; "auto" decides.
    triton_instance_kind: str = "auto"


class OperationServerSettings(_AuthSettings, _TelemetryCheckSettings, _KafkaReaderSettings):
    """smap-operation-server: REST API over VictoriaMetrics, WebSocket live stream, the dashboard page."""

    operation_host: str | None = None  # None: smap_bind_address
    operation_port: int = 8000
    victoria_url: str = "http://localhost:8428"
    victoria_timeout_s: float = Field(default=5.0, gt=0)
    #: The alert manager's API, proxied under /api/smap/alerts so the page talks to one origin.
    alert_manager_url: str = "http://localhost:8002"
    alerts_topic: str = "smap-alerts"
    kafka_fetch_max_wait_ms: int = 100  # the live stream to browsers: 10 updates a second are plenty
    kafka_fetch_min_bytes: int = Field(default=OFF_PATH_FETCH_MIN_BYTES, ge=1)
    smap_data_dir: Path | None = None  # the sensor count of each entity comes from its data
    operation_web_dir: Path | None = None  # None: smap-operation-server/web (checkout or image)
    metrics_port: int = 9305
    #: Messages a WebSocket client may lag behind before it is dropped (close 1013): 2 s of a 1,000-stream
    #: fleet at 1 Hz for a client watching all of it (~6 MB at most); 256 dropped such a client whenever the
    #: host was busy.
    ws_queue_max: int = Field(default=2048, ge=1, le=1_000_000)


class AlertManagerSettings(_AuthSettings, _KafkaReaderSettings):
    """smap-alert-manager: rules over the results topic, alert history in PostgreSQL, notifications."""

    alert_group_id: str = "smap-alert-manager"
    alert_rules_file: Path | None = None  # None: the packaged alert_rules.toml
    alerts_topic: str = "smap-alerts"
    alert_api_host: str | None = None  # None: smap_bind_address
    alert_api_port: int = 8002
    #: Secrets come from the environment only; empty disables the channel.
    slack_webhook_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    alert_email_from: str = "smap-alerts@localhost"
    #: Where notifications link to: the dashboard's address as the recipients reach it (behind a proxy: its
    #: public URL); each notification links to the alert's entity at the time it opened.
    alert_dashboard_url: str = "http://localhost:8000"
    alert_email_to: str = ""  # comma-separated
    #: Outbox delivery: per-attempt timeout, exponential backoff between attempts (capped), attempts before
    #: a notification is marked failed, and how many notifications are sent concurrently.
    alert_delivery_timeout_s: float = Field(default=10.0, gt=0)
    alert_delivery_backoff_s: float = Field(default=1.0, gt=0)
    alert_delivery_backoff_max_s: float = Field(default=300.0, gt=0)
    alert_delivery_max_attempts: int = Field(default=50, ge=1)
    alert_delivery_workers: int = Field(default=2, ge=1, le=32)
    alert_batch_max: int = Field(default=500, ge=1)  # results applied per PostgreSQL transaction
    #: A firing whose frame is older than this (wall clock) is recorded but not notified: a new database reads
    #: the results topic from its start, and a week of retained results must not page anyone. 0 disables.
    alert_notify_max_age_s: float = Field(default=3600.0, ge=0)
    kafka_fetch_max_wait_ms: int = 200  # each fetched batch is one PostgreSQL transaction: 5 a second
    kafka_fetch_min_bytes: int = Field(default=OFF_PATH_FETCH_MIN_BYTES, ge=1)
    metrics_port: int = 9306
