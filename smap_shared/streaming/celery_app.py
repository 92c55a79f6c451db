"""The Celery configuration shared by the publishing side (trigger) and the consuming side (workers), so
both declare the shard queues with the same arguments."""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.serialization import register

from smap_shared.routing import queue_name
from smap_shared.settings import TriggerSettings, WorkerSettings

log = logging.getLogger(__name__)


#: The task serializer: plain JSON on the wire, encoded and decoded by msgspec. kombu's own "json" runs
#: Python's json with an object hook on every dict (each frame, each sensor map): a tenth of a worker's CPU in
#: the 1,000-stream profile. Its own content type, so kombu's "json" (what a user's `delay()` sends, with
#: kombu's markers for dates and the like) is still accepted and decoded by kombu.
TASK_SERIALIZER = "smap-json"
TASK_CONTENT_TYPE = "application/x-smap-json"
register(TASK_SERIALIZER, msgspec.json.Encoder().encode, msgspec.json.Decoder().decode,  # type: ignore[no-untyped-call]
         content_type=TASK_CONTENT_TYPE, content_encoding="utf-8")


def shard_queues(shards: int) -> list[Queue]:
    """One durable direct queue per shard (named and routed by the shard's queue name)."""
    queues = []
    for k in range(shards):
        name = queue_name(k)
        exchange = Exchange(name, type="direct", durable=True)  # type: ignore[no-untyped-call]
        queues.append(Queue(name, exchange, routing_key=name, durable=True))  # type: ignore[no-untyped-call]
    return queues


def make_celery_app(settings: TriggerSettings | WorkerSettings, main: str = "smap_analysis") -> Celery:
    app = Celery(main, broker=settings.celery_broker_url, backend=settings.celery_result_backend,
                 set_as_current=False)
    app.conf.update(
        # Publisher confirms where tasks are published (the trigger): send_task returns only once RabbitMQ has
        # taken the message, so Kafka offsets are committed after that. Workers publish only Flower events;
        # a confirm round trip for each of those costs throughput and protects nothing.
        broker_transport_options={"confirm_publish": isinstance(settings, TriggerSettings)},
        broker_connection_retry_on_startup=True,
        task_queues=shard_queues(settings.inference_shards),
        task_default_queue=queue_name(0),
        task_create_missing_queues=False,  # a typo'd queue name fails loudly instead of piling up
        task_serializer=TASK_SERIALIZER,
        accept_content=[TASK_SERIALIZER, "json"],
        task_default_delivery_mode="persistent",
        # at-least-once: a task is acked after it ran (its result is in Kafka); a worker that dies mid-task
        # hands it back to the queue, at its place, so the stream's order holds
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Results travel through Kafka (smap-inference-results); nobody reads Celery results, and storing
        # one per step in Redis would only cost a write per frame and memory. The backend stays configured
        # for ad-hoc tasks and tools.
        task_ignore_result=True,
        worker_send_task_events=True,  # Flower
    )
    return app


#: A busy flag outlives a worker that died mid-task by at most this long (the trigger also bounds any hold
#: by TRIGGER_HOLD_MAX_MS).
BUSY_TTL_MS = 30_000


class ShardBusy:
    """Whether a shard's worker is running a task: a key per queue in the Celery result backend (Redis), set
    by the worker while it runs one, read by the trigger's adaptive batches (a queue's ready count alone
    cannot tell a busy worker from an idle one). Best effort on both sides: a flag that cannot be written or
    read counts as "not busy" -- it only ever delays a publish, it never blocks a task or loses a frame.

    The keys carry the broker's vhost: two systems (or a test's chain) that share a Redis but not a vhost
    never see each other's flags.

    >>> ShardBusy("rpc://").busy(["q"])  # no Redis backend: nobody is ever "busy"
    [False]
    >>> ShardBusy("rpc://", "amqp://u:p@rabbit:5672/smap-test-1").key("smap-inference-shard-0")
    'smap:shard-busy:smap-test-1:smap-inference-shard-0'
    """

    def __init__(self, backend_url: str, broker_url: str = "", timeout_s: float = 0.5) -> None:
        self.vhost = urllib.parse.unquote(urllib.parse.urlsplit(broker_url).path.lstrip("/")) or "/"
        self._redis: Any = None
        if backend_url.startswith(("redis://", "rediss://")):
            import redis

            self._redis = redis.Redis.from_url(backend_url, socket_timeout=timeout_s,
                                               socket_connect_timeout=timeout_s)

    def key(self, queue: str) -> str:
        return f"smap:shard-busy:{self.vhost}:{queue}"

    @contextlib.contextmanager
    def running(self, queue: str | None) -> Iterator[None]:
        """Mark `queue`'s worker busy for the block (None: a task not delivered from a queue, no mark)."""
        marked = queue is not None and self._call(lambda r: r.set(self.key(queue), "1", px=BUSY_TTL_MS))
        try:
            yield
        finally:
            if marked and queue is not None:
                self._call(lambda r: r.delete(self.key(queue)))

    def busy(self, queues: Sequence[str]) -> list[bool]:
        """For each queue: its worker is running a task (False where that cannot be told)."""
        if not queues:
            return []
        got = self._call(lambda r: r.mget([self.key(q) for q in queues]))
        return [v is not None for v in got] if isinstance(got, list) else [False] * len(queues)

    def _call(self, action: Callable[[Any], Any]) -> Any:
        if self._redis is None:
            return None
        try:
            return action(self._redis)
        except Exception as exc:  # best effort, see the class
            log.debug("shard busy flag: %r", exc)
            return None

    def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
