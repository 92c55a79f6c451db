"""aiokafka producer and consumer factories shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, OffsetOutOfRangeError

log = logging.getLogger(__name__)

SHUTDOWN_STEP_TIMEOUT_S = 10.0
#: Record batch size of every producer: a micro-batch's results (~3 KB each) or a tick of a large fleet go
#: out as a few large batches instead of one 16 KiB batch per five records; the broker's cost is per batch
#: and per request far more than per byte (docs/limits.md has the size limits).
PRODUCER_BATCH_BYTES = 512 * 1024


class AckedSender(Protocol):
    """What the services need of a producer for one-off messages (AIOKafkaProducer fits)."""

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Any: ...


async def start_producer(
    bootstrap_servers: str, *, client_id: str, idempotence: bool = True, linger_ms: int = 0
) -> AIOKafkaProducer:
    """A started producer that waits for all in-sync replicas (acks=all).

    Idempotence (no duplicates from the producer's own retries) is asked for first; brokers that refuse
    it (Tansu answers InitProducerId with an unknown error) get a plain acks=all producer instead. Every
    consumer downstream tolerates duplicates (the model replays a redelivered index), so this only costs
    an occasional duplicate frame.
    """
    if idempotence:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all",
            enable_idempotence=True, linger_ms=linger_ms, max_batch_size=PRODUCER_BATCH_BYTES,
        )
        try:
            await producer.start()
            return producer
        except KafkaConnectionError:
            await producer.stop()
            raise
        except KafkaError as exc:
            await producer.stop()
            log.warning("broker refused an idempotent producer (%r): using acks=all without idempotence", exc)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all", linger_ms=linger_ms,
        max_batch_size=PRODUCER_BATCH_BYTES,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


def make_consumer(
    topic: str, *, bootstrap_servers: str, group_id: str, client_id: str, fetch_max_wait_ms: int,
    max_poll_records: int = 500, fetch_min_bytes: int = 1,
) -> AIOKafkaConsumer:
    """A consumer-group member that commits by hand (after the message's effect is durable elsewhere)
    and starts from the earliest offset when its group has none committed."""
    return AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, group_id=group_id, client_id=client_id,
        enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=fetch_max_wait_ms,
        fetch_min_bytes=fetch_min_bytes, max_poll_records=max_poll_records,
    )


async def record_exists(bootstrap_servers: str, tp: TopicPartition, offset: int, timeout_s: float = 1.0) -> bool:
    """Does the partition hold a record at `offset`? (A probe of its own: no group, nothing committed.)

    Needed because `end_offsets` cannot be trusted near a partition's end: the in-memory dev broker (Tansu)
    answers ListOffsets(latest) with the base offset of the partition's last record batch + 1, not the offset
    after its last record, so an offset inside the last batch looks "beyond the end"."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=50, auto_offset_reset="none")
    await probe.start()
    try:
        probe.assign([tp])
        probe.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                batch = await probe.getmany(tp, timeout_ms=200, max_records=1)
            except OffsetOutOfRangeError:  # the broker itself says the offset lies beyond the end
                return False
            if batch.get(tp):
                return any(r.offset >= offset for r in batch[tp])
        return False
    finally:
        await probe.stop()


def key_text(record: ConsumerRecord) -> str | None:
    key = record.key
    if key is None:
        return None
    return key.decode("utf-8", errors="replace") if isinstance(key, bytes) else str(key)


async def commit(consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit `offsets` (next offset to read, per partition); False when the group rebalanced meanwhile
    (the records are then redelivered to the new owner: at-least-once)."""
    if not offsets:
        return True
    try:
        await consumer.commit(dict(offsets))
        return True
    except KafkaError as exc:
        log.warning("offset commit failed (%r); the uncommitted records will be redelivered", exc)
        return False


async def settle(step: Awaitable[object], what: str, timeout_s: float = SHUTDOWN_STEP_TIMEOUT_S) -> None:
    """One shutdown step, bounded and never raising: a failed commit or close must not keep the others
    from running (nor hang a process whose loop is being torn down)."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except Exception as exc:
        log.warning("%s failed during shutdown: %r", what, exc)


class ContiguousFetcher:
    """`getmany` that never silently skips a record.

    The Kafka-compatible dev broker (Tansu, in memory) now and then answers a fetch that races an append
    with a batch that skips one offset (seen here: ~1 record in 4,500 with concurrent producers and
    readers). Our topics use neither transactions nor compaction, so their offsets are contiguous and any
    gap is such a skip: the partition is cut at the gap and fetched again from the missing offset. A gap
    that persists after `max_refetch` tries (a transaction marker on a real Kafka, say) is accepted with a
    warning, so a consumer can never spin on it.
    """

    def __init__(self, consumer: AIOKafkaConsumer, max_refetch: int = 5,
                 on_gap: Callable[[], None] | None = None) -> None:
        self.consumer = consumer
        self.max_refetch = max_refetch
        self.on_gap = on_gap
        self._tries: dict[tuple[TopicPartition, int], int] = {}

    async def _positions(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp in self.consumer.assignment():
            with contextlib.suppress(Exception):  # a partition being reassigned has no position yet
                out[tp] = await self.consumer.position(tp)
        return out

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        before = await self._positions()
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: dict[TopicPartition, list[Any]] = {}
        for tp, records in batches.items():
            expected = before.get(tp)
            keep = []
            for record in records:
                if expected is not None and record.offset > expected:
                    key = (tp, expected)
                    self._tries[key] = self._tries.get(key, 0) + 1
                    if self._tries[key] <= self.max_refetch:
                        log.warning("%s[%d]: fetch skipped offsets %d..%d; fetching again from %d",
                                    tp.topic, tp.partition, expected, record.offset - 1, expected)
                        if self.on_gap is not None:
                            self.on_gap()
                        self.consumer.seek(tp, expected)
                        break
                    log.warning("%s[%d]: offsets %d..%d still missing after %d fetches; going on",
                                tp.topic, tp.partition, expected, record.offset - 1, self.max_refetch)
                self._tries.pop((tp, record.offset), None)
                keep.append(record)
                expected = record.offset + 1
            if keep:
                out[tp] = keep
        return out
