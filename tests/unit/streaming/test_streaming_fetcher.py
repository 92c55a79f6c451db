"""ContiguousFetcher: a fetch that skips an offset is cut there and fetched again (fake consumer)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition

from smap_shared.streaming.kafka import ContiguousFetcher

TP = TopicPartition("t", 0)


@dataclass
class Rec:
    offset: int


class FakeConsumer:
    """Serves offsets from `position`; `skip` offsets are left out of the first `skip_times` fetches."""

    def __init__(self, end: int, skip: set[int], skip_times: int) -> None:
        self.pos, self.end, self.skip, self.skip_times = 0, end, skip, skip_times
        self.seeks: list[int] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.pos = offset

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Rec]]:
        recs = []
        for off in range(self.pos, min(self.end, self.pos + (max_records or 10))):
            if off in self.skip and self.skip_times > 0:
                self.skip_times -= 1
                continue
            recs.append(Rec(off))
        if recs:
            self.pos = recs[-1].offset + 1
        return {TP: recs} if recs else {}


async def _drain(fetcher: ContiguousFetcher, consumer: FakeConsumer) -> list[int]:
    got: list[int] = []
    for _ in range(50):
        for recs in (await fetcher.getmany(timeout_ms=1)).values():
            got.extend(r.offset for r in recs)
        if consumer.pos >= consumer.end:
            break
    return got


def test_a_skipped_offset_is_fetched_again() -> None:
    consumer = FakeConsumer(end=30, skip={7}, skip_times=1)
    got = asyncio.run(_drain(ContiguousFetcher(consumer), consumer))
    assert got == list(range(30))
    assert consumer.seeks == [7]


def test_a_persistent_gap_is_accepted_after_max_refetch() -> None:
    consumer = FakeConsumer(end=20, skip={5}, skip_times=1000)  # e.g. a transaction marker on real Kafka
    gaps: list[int] = []
    fetcher = ContiguousFetcher(consumer, max_refetch=3, on_gap=lambda: gaps.append(1))
    got = asyncio.run(_drain(fetcher, consumer))
    assert got == [o for o in range(20) if o != 5]
    assert consumer.seeks == [5, 5, 5] and len(gaps) == 3
