"""The one consume -> handle -> commit loop of the Kafka services (after quix-streams' `Application.run`).

A service supplies a `BatchSink`: `add` takes one record (and may dead-letter it), `flush` makes everything
added so far durable downstream (a RabbitMQ confirm, a VictoriaMetrics 2xx, ...), retrying transient faults
until done or stopped. The loop reads with `getmany`, hands records to the sink in partition order, flushes
when `batch_max` records are pending or the oldest has waited `linger_s`, and commits the offsets of exactly
the records the flush covered -- never before: at-least-once, and every sink downstream tolerates a
redelivered record. A stop leaves unflushed records uncommitted; they are redelivered to the next owner.

Backpressure (after quix-streams' `SinkBackpressureError`): a service may pass `hold`, asked when the linger
is due; True means "downstream has not taken the last flush yet", and the loop keeps collecting for another
linger instead of flushing -- up to `batch_max` records, and for at most `hold_max_s` past the linger (then
it flushes regardless). Under load the batches so grow by themselves; at light load `hold` says False and
nothing waits longer than the linger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Gauge

from smap_shared.streaming.kafka import ContiguousFetcher, commit, settle

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 200


class BatchSink(Protocol):
    async def add(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        """Take one record; False when stopped before it could be taken (it stays uncommitted)."""

    async def flush(self) -> bool:
        """Make every record taken so far durable; False when stopped before that (nothing is committed)."""


@dataclass
class LoopStats:
    records: int = 0
    flushes: int = 0
    commits: int = 0
    holds: int = 0  # lingers that ended while `hold` said downstream was busy


Committer = Callable[[Mapping[TopicPartition, int]], Awaitable[bool]]


def lag_gauge(consumer: AIOKafkaConsumer, lag: Gauge) -> Callable[[TopicPartition, list[Any]], None]:
    """An `on_fetched` that sets `lag{partition}` to the records behind the partition's high watermark."""

    def on_fetched(tp: TopicPartition, records: list[Any]) -> None:
        highwater = consumer.highwater(tp)
        if highwater is not None:
            lag.labels(str(tp.partition)).set(max(0, highwater - records[-1].offset - 1))

    return on_fetched


async def run_batches(
    consumer: AIOKafkaConsumer, sink: BatchSink, stop: asyncio.Event, *, batch_max: int, linger_s: float,
    commit_offsets: Committer | None = None, on_fetched: Callable[[TopicPartition, list[Any]], None] | None = None,
    on_commit: Callable[[], None] | None = None, final_flush_timeout_s: float = 20.0,
    hold: Callable[[], Awaitable[bool]] | None = None, hold_max_s: float = 1.0,
    on_hold: Callable[[], None] | None = None,
) -> LoopStats:
    """Consume until `stop` is set (the consumer must be started). `commit_offsets` defaults to a Kafka
    commit of the group; `on_fetched(tp, records)` sees every fetched batch (lag gauges); `on_commit` and
    `on_hold` are told of each commit and each hold (metrics)."""
    fetcher = ContiguousFetcher(consumer)
    committer: Committer = commit_offsets or (lambda offsets: commit(consumer, offsets))
    stats = LoopStats()
    offsets: dict[TopicPartition, int] = {}
    pending = 0
    first_at: float | None = None  # when the oldest pending record was taken
    due_at: float | None = None  # when the pending records are due (the linger, or a hold's next look)

    async def flush_and_commit() -> bool:
        nonlocal pending, first_at, due_at
        if not await sink.flush():
            return False
        stats.flushes += 1
        if offsets and await committer(dict(offsets)):
            stats.commits += 1
            if on_commit is not None:
                on_commit()
        offsets.clear()
        pending, first_at, due_at = 0, None, None
        return True

    try:
        while not stop.is_set():
            timeout_ms = POLL_TIMEOUT_MS if due_at is None else max(0, int((due_at - time.monotonic()) * 1000))
            batches = await fetcher.getmany(timeout_ms=timeout_ms, max_records=max(1, batch_max - pending))
            stopped = False
            for tp, records in batches.items():
                for record in records:
                    # a stop leaves the rest for the next owner of the partition (redelivered from there)
                    if stop.is_set() or not await sink.add(tp, record):
                        stopped = True
                        break
                    offsets[tp] = record.offset + 1
                    pending += 1
                    stats.records += 1
                    if first_at is None:
                        first_at = time.monotonic()
                        due_at = first_at + linger_s
                if on_fetched is not None and records:
                    on_fetched(tp, records)
                if stopped:
                    break
            now = time.monotonic()
            full = pending >= batch_max
            due = due_at is not None and (full or now >= due_at)
            if (due and not full and not stopped and hold is not None and first_at is not None
                    and now - first_at < linger_s + hold_max_s and await hold()):
                stats.holds += 1
                if on_hold is not None:
                    on_hold()
                due_at = now + linger_s  # downstream still busy: collect for another linger
                continue
            if (due or stopped) and pending and not await flush_and_commit():
                break
            if stopped:
                break  # a refused record ends the loop: it and everything after it are redelivered
    finally:
        if pending:  # after a stop: one more attempt; what became durable gets committed
            await settle(flush_and_commit(), "final flush", final_flush_timeout_s)
    return stats
