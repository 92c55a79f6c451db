"""The consumer's batch writer: offsets are committed only after VictoriaMetrics accepted the lines."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import TopicPartition

from smap_shared.streaming.consumer import BatchWriter, VictoriaImportError

TP0, TP1 = TopicPartition("r", 0), TopicPartition("r", 1)


class FakeImporter:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts = 0
        self.accepted: list[list[str]] = []

    async def import_lines(self, lines: list[str]) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise (ConnectionRefusedError("vm down") if self.failures % 2 else VictoriaImportError("503"))
        self.accepted.append(list(lines))


class Commits:
    def __init__(self) -> None:
        self.calls: list[dict[TopicPartition, int]] = []

    async def __call__(self, offsets: Mapping[TopicPartition, int]) -> bool:
        self.calls.append(dict(offsets))
        return True


def _writer(importer: FakeImporter, commits: Commits, stop: asyncio.Event, batch_max: int = 3) -> BatchWriter:
    return BatchWriter(importer, commits, stop, batch_max=batch_max, flush_interval_s=0.05,
                       backoff_s=0.001, backoff_max_s=0.004)


def test_commit_only_after_the_import_was_accepted() -> None:
    async def scenario() -> None:
        importer, commits, stop = FakeImporter(failures=4), Commits(), asyncio.Event()
        writer = _writer(importer, commits, stop)
        writer.add(TP0, 10, ["a 1 1"])
        writer.add(TP1, 5, ["b 1 1", "c 1 1"])
        writer.add(TP0, 11, ["d 1 1"])
        assert writer.seconds_until_due() == 0.0  # batch_max messages reached
        assert await writer.flush()
        assert importer.attempts == 5  # 4 failures retried in place, the 5th accepted
        assert importer.accepted == [["a 1 1", "b 1 1", "c 1 1", "d 1 1"]]  # the same batch, nothing lost
        assert commits.calls == [{TP0: 12, TP1: 6}]
        assert writer.lines_written == 4
        assert writer.seconds_until_due() is None

    asyncio.run(scenario())


def test_stop_while_vm_is_down_commits_nothing_and_keeps_the_batch() -> None:
    async def scenario() -> None:
        importer, commits, stop = FakeImporter(failures=10**6), Commits(), asyncio.Event()
        writer = _writer(importer, commits, stop)
        writer.add(TP0, 0, ["a 1 1"])
        flushing = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.05)
        assert importer.attempts > 3
        assert not flushing.done()
        stop.set()
        assert await flushing is False
        assert commits.calls == []
        assert writer.pending.lines == ["a 1 1"]
        # VictoriaMetrics back: the one attempt after the stop (shutdown flush) writes and commits it
        importer.failures = 0
        assert await writer.flush()
        assert commits.calls == [{TP0: 1}]

    asyncio.run(scenario())


def test_flush_interval_and_dead_letter_only_batches() -> None:
    async def scenario() -> None:
        importer, commits, stop = FakeImporter(), Commits(), asyncio.Event()
        writer = _writer(importer, commits, stop, batch_max=100)
        assert writer.seconds_until_due() is None
        writer.add(TP0, 4, [])  # a dead-lettered record: no lines, but its offset must be committed
        due = writer.seconds_until_due()
        assert due is not None and 0 < due <= 0.05
        await asyncio.sleep(0.06)
        assert writer.seconds_until_due() == 0.0
        assert await writer.flush()
        assert importer.attempts == 0
        assert commits.calls == [{TP0: 5}]

    asyncio.run(scenario())
