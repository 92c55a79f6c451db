"""Kafka helpers the integration tests share: produce records with acks, read a topic from the start, a
group's committed offsets against the partitions' ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from smap_shared.streaming.kafka import ContiguousFetcher


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Send (key, value) records one by one, each acknowledged by all replicas."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, want: int, timeout_s: float, distinct: Callable[[bytes], object] | None = None
) -> list[bytes]:
    """Values of the topic from the beginning, until `want` of them (or `want` distinct keys of them,
    redeliveries counted once) arrived or `timeout_s` passed."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_wait_ms=20)
    await consumer.start()
    fetcher = ContiguousFetcher(consumer)  # the dev broker can skip a record in a fetch that races an append
    out: list[bytes] = []
    keys: set[object] = set()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (len(keys) if distinct else len(out)) < want and loop.time() < deadline:
            batch = await fetcher.getmany(timeout_ms=200, max_records=2000)
            new = [r.value for records in batch.values() for r in records]
            out.extend(new)
            if distinct:
                keys.update(distinct(v) for v in new)
    finally:
        await consumer.stop()
    return out


async def committed_and_end(bootstrap: str, topic: str, group: str
                            ) -> tuple[dict[int, int | None], dict[int, int]]:
    """Per partition of `topic`: the offset `group` committed (None: nothing) and the partition's end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = sorted(consumer._client.cluster.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
        reported = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return committed, await _true_ends(bootstrap, reported)


async def _true_ends(bootstrap: str, reported: dict[TopicPartition, int]) -> dict[int, int]:
    """The offset after each partition's last record. The dev broker reports the base offset of the last
    record batch + 1 as a partition's end (see smap_shared.streaming.kafka.record_exists): read the last batch."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=50)
    await probe.start()
    try:
        tps = [tp for tp, end in reported.items() if end > 0]
        out = {tp.partition: end for tp, end in reported.items()}
        if tps:
            probe.assign(tps)
            for tp in tps:
                probe.seek(tp, reported[tp] - 1)
            idle = 0
            while idle < 3:
                batch = await probe.getmany(timeout_ms=200)
                idle = 0 if batch else idle + 1
                for tp, records in batch.items():
                    out[tp.partition] = max(out[tp.partition], records[-1].offset + 1)
        return out
    finally:
        await probe.stop()
