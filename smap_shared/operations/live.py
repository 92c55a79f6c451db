"""Live stream: inference results and alert events from Kafka, fanned out to WebSocket clients.

The feed reads `smap-inference-results` and `smap-alerts` with its own consumer (no group, nothing
committed, starting at the newest offset: a dashboard wants what happens now, not a replay). Each message
is serialised once and offered to every client whose subscription matches; a record of a stream no client
watches is skipped by its key before it is decoded (1,000 streams with one dashboard open cost what that
dashboard's stream costs). Every client has a bounded
queue drained by its own sender; a client whose queue is full (it reads slower than results arrive) is
dropped with close code 1013, so one slow browser can never stall the feed or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from smap_shared.schemas import AlertEvent, InferenceResult, sensor_order
from smap_shared.settings import OperationServerSettings
from smap_shared.streaming.kafka import ContiguousFetcher, key_text, settle
from smap_shared.streaming.validation import Invalid, validate_result

log = logging.getLogger(__name__)

QUEUE_MAX = 256  # messages a client may lag behind before it is dropped (the server: ws_queue_max)
SEND_TIMEOUT_S = 5.0  # one send that takes longer means the client stopped reading
CLOSE_TOO_SLOW = 1013  # "try again later"
FEED_RETRY_S = 1.0
FEED_RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class LiveMetrics:
    clients: Gauge
    dropped: Counter
    forwarded: Counter
    invalid: Counter


@cache
def live_metrics() -> LiveMetrics:
    return LiveMetrics(
        clients=Gauge("smap_operation_ws_clients", "WebSocket clients connected"),
        dropped=Counter("smap_operation_ws_dropped_total", "WebSocket clients dropped for reading too slowly"),
        forwarded=Counter("smap_operation_live_messages_total", "Messages fanned out, by type", ["type"]),
        invalid=Counter("smap_operation_live_invalid_total", "Feed records that failed validation"),
    )


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class LiveMessage:
    satellite_id: str
    entity: str
    text: str  # the JSON sent to clients, serialised once


def result_message(result: InferenceResult) -> dict[str, Any]:
    """The WebSocket form of one inference result (`type: smap_inference`)."""
    sensors = sensor_order(tuple(result.sensor_values))
    labels = result.ground_truth_labels
    out: dict[str, Any] = {
        "type": "smap_inference",
        "satellite_id": result.satellite_id,
        "entity": result.entity,
        "timestamp": result.model_dump(mode="json", include={"timestamp"})["timestamp"],
        "index": result.index,
        "anomaly_score": result.anomaly_score,
        "anomaly_detected": result.anomaly_detected,
        "threshold": result.threshold,
        # the value the deployed rule compares with `threshold` (absent from older results)
        "detector_signal": getattr(result, "detector_signal", None),
        # why anomaly_detected is set (names of smap_shared.model.rules.ALARM_CAUSES; [] without an alarm)
        "alarm_causes": result.alarm_causes,
        "ground_truth": max(labels.values()) if labels else None,
        "sensors": [
            {"id": s, "value": result.sensor_values[s], "reconstruction": result.reconstruction[s],
             "error": result.sensor_error[s], **({"ground_truth": labels[s]} if s in labels else {})}
            for s in sensors
        ],
    }
    return out


_json = msgspec.json.Encoder()  # compact JSON, ~5x faster than json.dumps for a result's ~100 floats


def decode(topic: str, raw: bytes | None, results_topic: str) -> LiveMessage | None:
    """A record of the results or alerts topic as a LiveMessage; None (logged) when it is not valid."""
    if topic == results_topic:
        checked = validate_result(raw)
        if isinstance(checked, Invalid):
            log.warning("skipping an invalid result: %s", checked.reason)
            return None
        body = result_message(checked)
        return LiveMessage(checked.satellite_id, checked.entity, _json.encode(body).decode())
    try:
        event = AlertEvent.model_validate_json(raw or b"")
    except ValidationError as exc:
        log.warning("skipping an invalid alert event: %s", exc.errors(include_url=False)[:3])
        return None
    return LiveMessage(event.satellite_id, event.entity, event.model_dump_json())


# ---------------------------------------------------------------- subscriptions and clients


@dataclass(frozen=True)
class Subscription:
    satellite_id: str | None = None  # None: every satellite
    entity: str | None = None  # None: every entity (of the satellite)

    def matches(self, satellite_id: str, entity: str) -> bool:
        return (self.satellite_id in (None, satellite_id)) and (self.entity in (None, entity))

    def may_match_key(self, key: str) -> bool:
        """`matches` for a record known only by its stream id `<satellite>/<entity>`: True for every key of a
        stream that matches (ids holding a "/" may give a True that `matches` then refuses, never a False)."""
        return ((self.satellite_id is None or key.startswith(self.satellite_id + "/"))
                and (self.entity is None or key.endswith("/" + self.entity)))

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> Subscription:
        sat = query.get("satellite_id") or None
        ent = query.get("entity") or None
        return cls(str(sat) if sat else None, str(ent) if ent else None)


class Socket(Protocol):
    """What the hub needs of a WebSocket (aiohttp's WebSocketResponse fits)."""

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


@dataclass(eq=False)
class Client:
    socket: Socket
    subscription: Subscription
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    dropped: bool = False
    sender: asyncio.Task[None] | None = None


class Hub:
    def __init__(self, queue_max: int = QUEUE_MAX, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.clients: set[Client] = set()
        self.queue_max = queue_max
        self.send_timeout_s = send_timeout_s
        self.metrics = live_metrics()
        self.published = 0
        self._closing: set[asyncio.Task[Any]] = set()

    def add(self, socket: Socket, subscription: Subscription) -> Client:
        client = Client(socket, subscription, asyncio.Queue(self.queue_max))
        client.sender = asyncio.create_task(self._send_loop(client))
        self.clients.add(client)
        self.metrics.clients.set(len(self.clients))
        return client

    async def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self.metrics.clients.set(len(self.clients))
        if client.sender is not None and client.sender is not asyncio.current_task():
            client.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client.sender

    def wants(self, key: str | None) -> bool:
        """Whether a record keyed `key` (a stream id, `<satellite>/<entity>`, as the worker keys results)
        may match a client: the feed decodes only those, so with nobody watching a stream its results cost
        nothing here. May say yes for a record no client takes (publish decides), never no for one a client
        would take; a record without a key is always wanted."""
        if key is None:
            return bool(self.clients)
        return any(client.subscription.may_match_key(key) for client in self.clients)

    def publish(self, message: LiveMessage) -> int:
        """Offer the message to every matching client without waiting; returns how many took it."""
        self.published += 1
        taken = 0
        for client in list(self.clients):
            if not client.subscription.matches(message.satellite_id, message.entity):
                continue
            try:
                client.queue.put_nowait(message.text)
                taken += 1
            except asyncio.QueueFull:
                self.drop(client, "queue full")
        return taken

    def drop(self, client: Client, why: str) -> None:
        """Forget a slow client now and close its socket in the background."""
        if client.dropped:
            return
        client.dropped = True
        self.clients.discard(client)
        self.metrics.clients.set(len(self.clients))
        self.metrics.dropped.inc()
        log.warning("dropping a slow WebSocket client (%s)", why)
        if client.sender is not None:
            client.sender.cancel()
        task = asyncio.create_task(client.socket.close(code=CLOSE_TOO_SLOW, message=b"too slow"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _send_loop(self, client: Client) -> None:
        while True:
            text = await client.queue.get()
            try:
                async with asyncio.timeout(self.send_timeout_s):  # no extra task per send (wait_for's)
                    await client.socket.send_str(text)
            except TimeoutError:
                self.drop(client, f"a send took over {self.send_timeout_s} s")
                return
            except (ConnectionError, RuntimeError) as exc:  # closed underneath us
                log.info("WebSocket send failed (%r); client gone", exc)
                self.clients.discard(client)
                self.metrics.clients.set(len(self.clients))
                return

    async def close_all(self) -> None:
        for client in list(self.clients):
            await self.remove(client)
            with contextlib.suppress(Exception):
                await client.socket.close(code=1001, message=b"server shutting down")


# ---------------------------------------------------------------- the Kafka feed


async def run_feed(settings: OperationServerSettings, hub: Hub, stop: asyncio.Event,
                   ready: asyncio.Event | None = None) -> None:
    """Fan results and alert events out to the hub until `stop`; reconnects while Kafka is away."""
    metrics = live_metrics()
    topics = (settings.results_topic, settings.alerts_topic)
    delay = FEED_RETRY_S
    while not stop.is_set():
        consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
            client_id="smap-operation-server", enable_auto_commit=False, auto_offset_reset="latest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms, fetch_min_bytes=settings.kafka_fetch_min_bytes,
            metadata_max_age_ms=30_000,  # pick up the alerts topic soon after it is created
        )
        try:
            await consumer.start()
            fetcher = ContiguousFetcher(consumer)
            # pin the starting positions now, so "latest" means when the server came up
            for tp in consumer.assignment():
                await consumer.position(tp)
            log.info("live feed reading %s from their newest offsets", ", ".join(topics))
            if ready is not None:
                ready.set()
            delay = FEED_RETRY_S
            while not stop.is_set():
                batches = await fetcher.getmany(timeout_ms=200, max_records=1000)
                for records in batches.values():
                    for record in records:
                        if not hub.wants(key_text(record)):
                            continue  # nobody watches this stream: not decoded at all
                        message = decode(record.topic, record.value, settings.results_topic)
                        if message is None:
                            metrics.invalid.inc()
                            continue
                        hub.publish(message)
                        kind = "smap_inference" if record.topic == settings.results_topic else "smap_alert"
                        metrics.forwarded.labels(kind).inc()
        except (KafkaError, OSError) as exc:
            log.warning("live feed: Kafka unavailable (%r); retrying in %.0f s", exc, delay)
            if ready is not None:
                ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, FEED_RETRY_MAX_S)
        finally:
            await settle(consumer.stop(), "closing the live feed consumer")
