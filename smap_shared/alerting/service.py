"""smap-alert-manager: the results topic -> alert rules -> alert history in PostgreSQL -> notifications.

Exactly-once processing: each fetched batch of results is applied in ONE PostgreSQL transaction together
with the partitions' next offsets (store.apply_batch), and on every partition assignment the consumer seeks
to the offsets stored there. A crash anywhere therefore replays exactly the records whose effects were not
committed; the Kafka group commit that follows is informational only (monitoring of the group's lag).
Notifications leave through the outbox (outbox.py); AlertEvents go to the alerts topic after the commit,
best effort (the dashboard's live feed; the history is the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import ChainMap
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool

from smap_shared.alerting.api import make_app
from smap_shared.alerting.engine import Engine, LifecycleKey, LifecycleState, Transition
from smap_shared.alerting.notifiers import Notifiers, Renderer
from smap_shared.alerting.outbox import Outbox
from smap_shared.alerting.rules import RuleSet, load_rules
from smap_shared.alerting.store import AlertStore, AppliedBatch, OffsetConflictError, ensure_database, migrate
from smap_shared.auth.store import AuthStore
from smap_shared.auth.web import AuthPolicy, check_mode, open_store
from smap_shared.schemas import AlertEvent, utc_now
from smap_shared.settings import AlertManagerSettings
from smap_shared.streaming.kafka import ContiguousFetcher, commit, record_exists, settle, start_producer
from smap_shared.streaming.retry import retry_until_done
from smap_shared.streaming.validation import Invalid, validate_result

log = logging.getLogger(__name__)

SERVICE = "smap-alert-manager"
POLL_TIMEOUT_MS = 200
DB_BACKOFF_S = 0.5
DB_BACKOFF_MAX_S = 10.0
PUBLISH_TIMEOUT_S = 5.0
SHELF_SWEEP_S = 1.0


@dataclass(frozen=True)
class AlertMetrics:
    results: Counter
    transitions: Counter
    notifications: Counter
    outbox_pending: Gauge


@cache
def alert_metrics() -> AlertMetrics:
    m = AlertMetrics(
        results=Counter("smap_alert_results_total", "Inference results read by the alert manager", ["outcome"]),
        transitions=Counter("smap_alert_transitions_total", "Alert lifecycle transitions", ["rule", "to_state"]),
        notifications=Counter("smap_alert_notifications_enqueued_total", "Notifications written to the outbox"),
        outbox_pending=Gauge("smap_alert_outbox_pending", "Notifications waiting in the outbox"),
    )
    for outcome in ("applied", "invalid"):
        m.results.labels(outcome)
    return m


async def seek_to_stored(consumer: AIOKafkaConsumer, assigned: Collection[TopicPartition],
                         stored: Mapping[int, int], bootstrap_servers: str) -> None:
    """Position each assigned partition at its next offset stored in PostgreSQL. A stored offset beyond the
    partition's end means the topic was created anew (the in-memory dev broker restarted with start-smap.sh):
    its records all come after what PostgreSQL saw, so it is read from its start, not from that offset
    (which would wait silently until the new topic grew past it and skip everything before)."""
    known = [tp for tp in assigned if tp.partition in stored]
    if not known:
        return
    ends = await consumer.end_offsets(known)
    for tp in known:
        offset = stored[tp.partition]
        # the broker's end can be too low (see record_exists): beyond it only when the record before is missing
        if offset > ends[tp] and not await record_exists(bootstrap_servers, tp, offset - 1):
            log.warning("%s[%d]: stored offset %d is beyond the partition's end %d: the topic was recreated; "
                        "reading it from the start", tp.topic, tp.partition, offset, ends[tp])
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)


class SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, position each partition at the next offset recorded in PostgreSQL (partitions never
    applied keep the group's committed offset, else the earliest)."""

    def __init__(self, consumer: AIOKafkaConsumer, store: AlertStore, group_id: str, topic: str,
                 on_assigned: Callable[[dict[int, int | None]], None], bootstrap_servers: str) -> None:
        self.consumer = consumer
        self.bootstrap_servers = bootstrap_servers
        self.store = store
        self.group_id = group_id
        self.topic = topic
        self.on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass  # every applied batch is already committed in PostgreSQL: nothing to flush

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        stored = await self.store.load_offsets(self.group_id, self.topic)
        await seek_to_stored(self.consumer, assigned, stored, self.bootstrap_servers)
        self.on_assigned({tp.partition: stored.get(tp.partition) for tp in assigned})
        log.info("assigned %s; positions from PostgreSQL: %s", sorted(tp.partition for tp in assigned),
                 {p: o for p, o in stored.items() if any(tp.partition == p for tp in assigned)})


class EventPublisher:
    def __init__(self, producer: AIOKafkaProducer | None, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def publish(self, events: list[AlertEvent]) -> None:
        """Best effort: the history in PostgreSQL is the record; the topic feeds live views."""
        if self.producer is None or not events:
            return
        try:
            futures = [await self.producer.send(self.topic, value=e.model_dump_json().encode(),
                                                key=e.stream_id.encode()) for e in events]
            await asyncio.wait_for(asyncio.gather(*futures), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            log.warning("publishing %d alert events to %s failed: %r", len(events), self.topic, exc)


async def _prepare_database(settings: AlertManagerSettings, stop: asyncio.Event) -> bool:
    async def prepare() -> None:
        await ensure_database(settings.alert_database_url)
        applied = await migrate(settings.alert_database_url)
        log.info("alert database ready (migrations applied now: %s)", applied or "none")

    return await retry_until_done(prepare, stop, "preparing the alert database", backoff_s=DB_BACKOFF_S,
                                  backoff_max_s=DB_BACKOFF_MAX_S)


async def _shelf_sweeper(store: AlertStore, outbox: Outbox, stop: asyncio.Event) -> None:
    """Every SHELF_SWEEP_S: end the shelves whose time is up and release the notifications they held."""
    while not stop.is_set():
        try:
            expired, released = await store.sweep_shelves()
            if expired:
                log.info("shelves %s expired", expired)
            if released:
                log.info("released %d held notification(s)", released)
                outbox.wake.set()
        except (psycopg.Error, OSError) as exc:  # the next sweep tries again; nothing is lost meanwhile
            log.warning("sweeping shelves failed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SHELF_SWEEP_S)


async def _auth_store(auth: AuthPolicy, url: str, stop: asyncio.Event) -> None:
    pool = await open_store(auth, url, stop)
    if pool is not None:
        await stop.wait()
        await pool.close()


class AlertConsumer:
    """The results topic through the engine into PostgreSQL, one transaction per fetched batch."""

    def __init__(self, settings: AlertManagerSettings, rules: RuleSet, store: AlertStore, renderer: Renderer,
                 outbox: Outbox, publisher: EventPublisher, stop: asyncio.Event) -> None:
        self.settings = settings
        self.engine = Engine(rules.enabled, frozenset(renderer.configured()), settings.alert_notify_max_age_s)
        self.store = store
        self.renderer = renderer
        self.outbox = outbox
        self.publisher = publisher
        self.stop = stop
        self.states: dict[LifecycleKey, LifecycleState] = {}
        self.open_alerts: dict[LifecycleKey, int] = {}
        self.metrics = alert_metrics()
        self.batches = 0
        #: per assigned partition, the next offset stored in PostgreSQL as this member last saw it (None: no
        #: row): the fencing token of apply_batch
        self.believed: dict[int, int | None] = {}
        self.reload = False

    def assigned(self, believed: dict[int, int | None]) -> None:
        # another member may have moved these partitions' lifecycles on: re-read them before the next batch
        self.believed = believed
        self.reload = True

    async def _apply(self, transitions: list[Transition], changed: Mapping[LifecycleKey, LifecycleState],
                     offsets: Mapping[int, tuple[int | None, int]]) -> AppliedBatch | None:
        """Apply the batch, retrying while PostgreSQL is away; None when stopped first (the batch is then
        replayed from the stored offsets by the next run)."""
        delay = DB_BACKOFF_S
        while True:
            try:
                return await self.store.apply_batch(
                    transitions, changed, self.open_alerts, offsets, group_id=self.settings.alert_group_id,
                    topic=self.settings.results_topic, renderer=self.renderer)
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("applying a batch failed (%r); retrying in %.1f s", exc, delay)
            try:
                await asyncio.wait_for(self.stop.wait(), delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, DB_BACKOFF_MAX_S)
            # a COMMIT whose answer was lost may have landed: then the stored offsets already say so
            try:
                stored = await self.store.load_offsets(self.settings.alert_group_id, self.settings.results_topic)
            except (psycopg.OperationalError, OSError):
                continue
            if offsets and all(stored.get(p) == new for p, (_, new) in offsets.items()):
                log.warning("the batch had been committed after all: reloading the lifecycle states")
                self.states, opened = await self.store.load_states()
                return AppliedBatch([], opened, 0)

    async def handle(self, batches: Mapping[TopicPartition, list[Any]]) -> bool:
        """Evaluate and apply one fetched batch; False when stopped before it was committed."""
        changed: dict[LifecycleKey, LifecycleState] = {}
        view: ChainMap[LifecycleKey, LifecycleState] = ChainMap(changed, self.states)
        transitions: list[Transition] = []
        offsets: dict[int, tuple[int | None, int]] = {}
        valid = 0
        for tp, records in batches.items():
            for record in records:
                checked = validate_result(record.value)
                if isinstance(checked, Invalid):
                    # the victoria consumer dead-letters invalid results; here they are skipped
                    self.metrics.results.labels("invalid").inc()
                    log.warning("skipping invalid result %s[%d]@%d: %s", tp.topic, tp.partition, record.offset,
                                checked.reason)
                else:
                    valid += 1
                    transitions.extend(self.engine.evaluate(checked, view, utc_now()))
                offsets[tp.partition] = (self.believed.get(tp.partition), record.offset + 1)
        applied = await self._apply(transitions, changed, offsets)
        if applied is None:
            return False
        # counted once committed: a batch fenced off (another member, or a resync) is not applied
        self.metrics.results.labels("applied").inc(valid)
        self.believed.update({p: new for p, (_, new) in offsets.items()})
        self.states.update(changed)
        self.open_alerts = applied.open_alerts
        self.batches += 1
        for t in transitions:
            self.metrics.transitions.labels(t.rule.name, t.to_state).inc()
            log.info("alert %s %s -> %s on %s at index %d%s", t.rule.name, t.from_state or "(new)", t.to_state,
                     t.key[1], t.index, f" ({t.message})" if t.message else "")
        if applied.notifications:
            self.metrics.notifications.inc(applied.notifications)
            self.outbox.wake.set()
        await self.publisher.publish(applied.events)
        return True

    async def _resync(self, consumer: AIOKafkaConsumer) -> None:
        self.states, self.open_alerts = await self.store.load_states()
        stored = await self.store.load_offsets(self.settings.alert_group_id, self.settings.results_topic)
        assignment = consumer.assignment()
        await seek_to_stored(consumer, assignment, stored, self.settings.kafka_bootstrap_servers)
        self.believed = {tp.partition: stored.get(tp.partition) for tp in assignment}

    async def run(self) -> None:
        self.states, self.open_alerts = await self.store.load_states()
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers, group_id=s.alert_group_id, client_id=SERVICE,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            fetch_min_bytes=s.kafka_fetch_min_bytes, max_poll_records=s.alert_batch_max)
        consumer.subscribe([s.results_topic], listener=SeekToStoredOffsets(
            consumer, self.store, s.alert_group_id, s.results_topic, self.assigned, s.kafka_bootstrap_servers))
        try:
            await consumer.start()
            fetcher = ContiguousFetcher(consumer)
            log.info("consuming %s as group %s (%d lifecycles restored, %d open alerts)", s.results_topic,
                     s.alert_group_id, len(self.states), len(self.open_alerts))
            while not self.stop.is_set():
                batches = await fetcher.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=s.alert_batch_max)
                if self.reload:
                    self.reload = False
                    self.states, self.open_alerts = await self.store.load_states()
                if not batches:
                    continue
                try:
                    if not await self.handle(batches):
                        break
                except OffsetConflictError as exc:
                    # another member applied these records (a rebalance raced this batch): drop the batch,
                    # take the stored truth, and go on from the stored offsets
                    log.warning("%s; re-reading states and offsets from PostgreSQL", exc)
                    await self._resync(consumer)
                    continue
                # informational: the group's lag for monitoring (the position of record is PostgreSQL's)
                await commit(consumer, {tp: records[-1].offset + 1 for tp, records in batches.items()})
        finally:
            await settle(consumer.stop(), "closing the consumer")


async def _outbox_gauge(outbox: Outbox, stop: asyncio.Event) -> None:
    gauge = alert_metrics().outbox_pending
    while not stop.is_set():
        with contextlib.suppress(psycopg.Error, OSError):
            gauge.set(await outbox.pending())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


async def run_alert_manager(settings: AlertManagerSettings, stop: asyncio.Event, rules: RuleSet | None = None
                            ) -> None:
    rules = rules or load_rules(settings.alert_rules_file)
    alert_metrics()
    renderer = Renderer(settings)
    configured = renderer.configured()
    for rule in rules.enabled:
        missing = [c for c in rule.channels if c not in configured]
        if missing:
            log.warning("rule %s names channel(s) %s that are not configured (SLACK_WEBHOOK_URL / SMTP_HOST + "
                        "ALERT_EMAIL_TO): its alerts are recorded, not sent there", rule.name, ", ".join(missing))
    log.info("%d alert rule(s) enabled: %s; channels configured: %s", len(rules.enabled),
             ", ".join(r.name for r in rules.enabled), ", ".join(sorted(configured)) or "none")
    host = settings.alert_api_host or settings.smap_bind_address
    check_mode(settings.smap_auth, host)
    if not await _prepare_database(settings, stop):
        return
    workers = settings.alert_delivery_workers
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.alert_database_url, min_size=2, max_size=workers + 4, open=False, timeout=30)
    await pool.open()
    session = aiohttp.ClientSession()
    producer: AIOKafkaProducer | None = None
    runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            producer = await start_producer(settings.kafka_bootstrap_servers, client_id=SERVICE)
        except Exception as exc:  # events are best effort; the history and notifications do not need them
            log.warning("no producer for %s (%r): alert events will not be published", settings.alerts_topic, exc)
        publisher = EventPublisher(producer, settings.alerts_topic)
        store = AlertStore(pool)
        notifiers = Notifiers(settings, session)
        outbox = Outbox(pool, notifiers.send, backoff_base_s=settings.alert_delivery_backoff_s,
                        backoff_max_s=settings.alert_delivery_backoff_max_s,
                        max_attempts=settings.alert_delivery_max_attempts)
        auth = AuthPolicy(settings.smap_auth, AuthStore(pool, settings.auth_session_hours)
                          if settings.users_database_url == settings.alert_database_url else None)
        if settings.smap_auth == "on" and auth.store is None:  # users in another database
            tasks.append(asyncio.create_task(_auth_store(auth, settings.users_database_url, stop)))
        runner = web.AppRunner(make_app(store, publisher.publish, auth, [r.name for r in rules.rule]),
                               access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, settings.alert_api_port).start()
        log.info("alert API on http://%s:%d/api/smap/alerts", host, settings.alert_api_port)
        tasks += [asyncio.create_task(outbox.run(stop, workers)), asyncio.create_task(_outbox_gauge(outbox, stop)),
                  asyncio.create_task(_shelf_sweeper(store, outbox, stop))]
        consumer = AlertConsumer(settings, rules, store, renderer, outbox, publisher, stop)
        await consumer.run()
    finally:
        stop.set()
        for task in tasks:
            await settle(task, "stopping a background task", 15.0)
        if runner is not None:
            await settle(runner.cleanup(), "stopping the API")
        if producer is not None:
            await settle(producer.stop(), "closing the producer")
        await settle(session.close(), "closing the HTTP session")
        await settle(pool.close(), "closing the database pool")
