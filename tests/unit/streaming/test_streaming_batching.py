"""run_batches, the one consume -> handle -> commit loop, with a fake consumer and a fake sink: a flush when
batch_max records are pending or the oldest waited linger_s, offsets committed only after a flush succeeded
and exactly those it covered, a failed flush ends the loop without a commit, a stop gets one final flush.
Then the consumer's VictoriaSink with a fake importer, alone and in the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from smap_shared.schemas import InferenceResult
from smap_shared.streaming import app
from smap_shared.streaming.app import LoopStats, run_batches
from smap_shared.streaming.consumer import ResultHandler, VictoriaImportError, VictoriaSink, result_lines
from smap_shared.streaming.metrics import consumer_metrics

TP0, TP1 = TopicPartition("r", 0), TopicPartition("r", 1)

Fetch = dict[TopicPartition, list[int]]  # the offsets one getmany returns, per partition


class FakeConsumer:
    """getmany serving `fetches` in turn, at most max_records records per call (the rest comes with the next
    call, as aiokafka does); `then` runs once they are all served. With nothing to serve it waits (at most
    10 ms of timeout_ms) and returns {}. position/assignment/seek are what ContiguousFetcher asks."""

    def __init__(self, fetches: Sequence[Fetch], stop: asyncio.Event, then: Callable[[], None] | None = None,
                 value: Callable[[TopicPartition, int], bytes | None] | None = None) -> None:
        self.fetches = [dict(f) for f in fetches]
        self.stop = stop
        self.then = then
        self.value = value or (lambda tp, offset: b"%d" % offset)
        self.pos: dict[TopicPartition, int] = {}
        for f in self.fetches:
            for tp, offsets in f.items():
                if offsets:
                    self.pos.setdefault(tp, offsets[0])
        self.calls: list[tuple[int, int | None]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.during: dict[int, Callable[[], None]] = {}  # call number -> run while that call fetches

    def assignment(self) -> set[TopicPartition]:
        return set(self.pos)

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self.calls.append((timeout_ms, max_records))
        hook = self.during.get(len(self.calls))
        if hook is not None:
            hook()
        if not self.fetches:
            if self.then is not None:
                then, self.then = self.then, None
                then()
            if not self.stop.is_set():
                await asyncio.sleep(min(timeout_ms, 10) / 1000)
            return {}
        fetch = self.fetches.pop(0)
        budget = max_records if max_records is not None else 10**9
        out: dict[TopicPartition, list[Any]] = {}
        rest: Fetch = {}
        for tp, offsets in fetch.items():
            take, left = offsets[:budget], offsets[budget:]
            budget -= len(take)
            if take:
                out[tp] = [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, self.value(tp, o), None, 0, 0, ())
                           for o in take]
                self.pos[tp] = take[-1] + 1
            if left:
                rest[tp] = left
        if rest:
            self.fetches.insert(0, rest)
        return out


class FakeSink:
    """Records what it is given; `flush_results` script the flushes in turn (True once they run out).
    Every step goes to the shared `log`, with the commits, to check their order."""

    def __init__(self, log: list[Any], flush_results: Sequence[bool] = ()) -> None:
        self.log = log
        self.flush_results = list(flush_results)
        self.pending: list[tuple[TopicPartition, int]] = []
        self.flushed: list[list[tuple[TopicPartition, int]]] = []
        self.added_at: list[float] = []
        self.flushed_at: list[float] = []

    async def add(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        assert record.value == b"%d" % record.offset
        self.pending.append((tp, record.offset))
        self.added_at.append(time.monotonic())
        self.log.append(("add", tp.partition, record.offset))
        return True

    async def flush(self) -> bool:
        self.log.append(("flush", len(self.pending)))
        await asyncio.sleep(0.001)  # a commit must wait for the flush to be done
        ok = self.flush_results.pop(0) if self.flush_results else True
        self.flushed_at.append(time.monotonic())
        self.log.append(("flushed", ok))
        if ok:
            self.flushed.append(self.pending)
            self.pending = []
        return ok


class Commits:
    def __init__(self, log: list[Any], ok: bool = True) -> None:
        self.log = log
        self.ok = ok
        self.calls: list[dict[TopicPartition, int]] = []

    async def __call__(self, offsets: Mapping[TopicPartition, int]) -> bool:
        self.calls.append(dict(offsets))
        self.log.append(("commit", {tp.partition: o for tp, o in offsets.items()}))
        return self.ok


def _run(coro: Coroutine[Any, Any, LoopStats]) -> LoopStats:
    async def bounded() -> LoopStats:
        return await asyncio.wait_for(coro, 5)

    return asyncio.run(bounded())


def test_a_flush_at_batch_max_then_a_final_flush_on_stop() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: list(range(7)), TP1: [0, 1, 2]}], stop, then=stop.set)
    sink, commits = FakeSink(log), Commits(log)
    fetched: list[tuple[int, list[int]]] = []
    stats = _run(run_batches(consumer, sink, stop, batch_max=4, linger_s=10.0,
                             commit_offsets=commits,
                             on_fetched=lambda tp, recs: fetched.append((tp.partition, [r.offset for r in recs]))))
    # never more than batch_max records pending: each fetch asks for what is left of the batch
    assert [m for _, m in consumer.calls][:3] == [4, 4, 4]
    assert consumer.calls[3][1] == 2  # 2 pending after the third fetch
    assert sink.flushed == [
        [(TP0, 0), (TP0, 1), (TP0, 2), (TP0, 3)],
        [(TP0, 4), (TP0, 5), (TP0, 6), (TP1, 0)],
        [(TP1, 1), (TP1, 2)],  # the final flush after the stop
    ]
    # exactly the offsets each flush covered (next offset to read), each after its flush
    assert commits.calls == [{TP0: 4}, {TP0: 7, TP1: 1}, {TP1: 3}]
    assert [e for e in log if e[0] != "add"] == [
        ("flush", 4), ("flushed", True), ("commit", {0: 4}),
        ("flush", 4), ("flushed", True), ("commit", {0: 7, 1: 1}),
        ("flush", 2), ("flushed", True), ("commit", {1: 3}),
    ]
    assert fetched == [(0, [0, 1, 2, 3]), (0, [4, 5, 6]), (1, [0]), (1, [1, 2])]
    assert (stats.records, stats.flushes, stats.commits) == (10, 3, 3)
    assert consumer.seeks == []


def test_a_flush_when_the_oldest_record_waited_linger() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [5, 6]}, {}, {TP1: [9]}], stop)
    sink, commits = FakeSink(log), Commits(log)
    linger = 0.08
    commit_count: list[int] = []

    def on_commit() -> None:
        commit_count.append(1)
        stop.set()

    stats = _run(run_batches(consumer, sink, stop, batch_max=100, linger_s=linger,
                             commit_offsets=commits, on_commit=on_commit))
    assert sink.flushed == [[(TP0, 5), (TP0, 6), (TP1, 9)]]
    waited = sink.flushed_at[0] - sink.added_at[0]
    assert linger <= waited < linger + 0.5
    assert commits.calls == [{TP0: 7, TP1: 10}]
    assert commit_count == [1]
    # the poll waits no longer than what is left of the linger once a record is pending
    assert consumer.calls[0][0] == app.POLL_TIMEOUT_MS
    assert all(0 <= t <= linger * 1000 for t, _ in consumer.calls[1:])
    assert (stats.records, stats.flushes, stats.commits) == (3, 1, 1)



def test_hold_defers_the_linger_flush_until_downstream_is_free_but_never_past_batch_max() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0, 1]}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}], stop)
    sink, commits = FakeSink(log), Commits(log)
    asked: list[float] = []

    async def busy_twice() -> bool:
        asked.append(time.monotonic())
        return len(asked) <= 2

    linger = 0.05
    told: list[int] = []
    stats = _run(run_batches(consumer, sink, stop, batch_max=100, linger_s=linger, commit_offsets=commits,
                             on_commit=stop.set, hold=busy_twice, on_hold=lambda: told.append(1)))
    assert sink.flushed == [[(TP0, 0), (TP0, 1)]]
    assert len(asked) == 3 and stats.holds == 2 == len(told)  # the trigger's smap_trigger_holds, counted once
    # each hold collects for another linger: the flush came after three of them, not one
    assert sink.flushed_at[0] - sink.added_at[0] >= 3 * linger
    assert commits.calls == [{TP0: 2}]

    # a full batch goes out whatever `hold` says (downstream stuck must not stall the trigger's reads)
    log.clear()
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: list(range(6))}], stop, then=stop.set)
    sink, commits = FakeSink(log), Commits(log)

    async def always_busy() -> bool:
        return True

    stats = _run(run_batches(consumer, sink, stop, batch_max=3, linger_s=10.0, commit_offsets=commits,
                             hold=always_busy))
    assert sink.flushed == [[(TP0, 0), (TP0, 1), (TP0, 2)], [(TP0, 3), (TP0, 4), (TP0, 5)]]
    assert commits.calls == [{TP0: 3}, {TP0: 6}]

def test_no_flush_and_no_commit_without_records() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{}, {}], stop, then=stop.set)
    sink, commits = FakeSink(log), Commits(log)
    stats = _run(run_batches(consumer, sink, stop, batch_max=2, linger_s=0.001,
                             commit_offsets=commits))
    assert log == [] and commits.calls == []
    assert (stats.records, stats.flushes, stats.commits) == (0, 0, 0)


def test_a_failed_flush_commits_nothing_and_ends_the_loop() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0, 1, 2]}, {TP0: [3, 4, 5]}], stop)
    sink, commits = FakeSink(log, flush_results=[False, False]), Commits(log)
    stats = _run(run_batches(consumer, sink, stop, batch_max=3, linger_s=10.0,
                             commit_offsets=commits))
    assert len(consumer.calls) == 1  # nothing read past the batch that could not be flushed
    # the loop's flush, then the one final attempt: neither made it durable, so nothing is committed
    assert [e for e in log if e[0] != "add"] == [
        ("flush", 3), ("flushed", False), ("flush", 3), ("flushed", False)]
    assert commits.calls == []
    assert (stats.records, stats.flushes, stats.commits) == (3, 0, 0)


def test_a_final_flush_that_succeeds_after_a_failed_one_commits_its_records() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0, 1, 2]}], stop)
    sink, commits = FakeSink(log, flush_results=[False, True]), Commits(log)
    stats = _run(run_batches(consumer, sink, stop, batch_max=3, linger_s=10.0,
                             commit_offsets=commits))
    assert commits.calls == [{TP0: 3}]
    assert (stats.flushes, stats.commits) == (1, 1)


def test_a_stop_leaves_the_records_read_after_it_uncommitted() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0, 1]}, {TP0: [2, 3], TP1: [0]}], stop)
    consumer.during[2] = stop.set  # the stop arrives while the second fetch is in flight
    sink, commits = FakeSink(log), Commits(log)
    stats = _run(run_batches(consumer, sink, stop, batch_max=100, linger_s=10.0,
                             commit_offsets=commits))
    assert sink.flushed == [[(TP0, 0), (TP0, 1)]]  # the final flush: what was taken before the stop
    assert commits.calls == [{TP0: 2}]  # offsets 2, 3 and TP1's 0 are redelivered to the next owner
    assert (stats.records, stats.flushes, stats.commits) == (2, 1, 1)


def test_a_refused_commit_is_not_counted_and_the_loop_goes_on() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0, 1]}, {TP0: [2, 3]}], stop, then=stop.set)
    sink, commits = FakeSink(log), Commits(log, ok=False)  # a rebalance: the records are redelivered
    done: list[int] = []
    stats = _run(run_batches(consumer, sink, stop, batch_max=2, linger_s=10.0,
                             commit_offsets=commits, on_commit=lambda: done.append(1)))
    assert commits.calls == [{TP0: 2}, {TP0: 4}]  # each commit covers only its own flush
    assert done == []
    assert (stats.records, stats.flushes, stats.commits) == (4, 2, 0)


def test_the_default_committer_commits_through_the_consumer() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    committed: list[dict[TopicPartition, int]] = []

    class Committing(FakeConsumer):
        async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
            committed.append(dict(offsets))

    consumer = Committing([{TP0: [0, 1, 2]}], stop, then=stop.set)
    stats = _run(run_batches(consumer, FakeSink(log), stop, batch_max=3, linger_s=10.0))
    assert committed == [{TP0: 3}]
    assert stats.commits == 1


# ---------------------------------------------------------------- VictoriaSink


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


def _result(index: int, entity: str = "A-1") -> InferenceResult:
    sensors = {"sensor_0": 1.0, "sensor_1": 0.5}
    return InferenceResult(
        stream_id=f"SAT-001/{entity}", satellite_id="SAT-001", entity=entity, model_name=f"smap_{entity}",
        timestamp="2026-11-28T09:00:00Z", index=index, sensor_values=sensors, reconstruction=sensors,
        sensor_error={"sensor_0": 0.0, "sensor_1": 0.25}, anomaly_score=0.5, anomaly_detected=False,
        threshold=1.0, inference_time_ms=2.0,
    )


def _record(value: bytes | None, offset: int, tp: TopicPartition = TP0) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"SAT-001/A-1", value, None, 0, 0, ())


def _victoria(importer: FakeImporter, producer: Any, stop: asyncio.Event) -> VictoriaSink:
    return VictoriaSink(importer, ResultHandler("dlq", producer, stop), stop, backoff_s=0.001, backoff_max_s=0.004)


def test_victoria_sink_retries_the_import_until_accepted(fake_producer: Callable[..., Any]) -> None:
    importer, producer = FakeImporter(failures=2), fake_producer()
    failures = consumer_metrics().import_failures._value.get()

    async def scenario() -> VictoriaSink:
        stop = asyncio.Event()
        sink = _victoria(importer, producer, stop)
        assert await sink.flush()  # nothing pending: no import
        assert importer.attempts == 0
        for i, r in enumerate([_result(0), _result(1)]):
            assert await sink.add(TP0, _record(r.model_dump_json().encode(), i))
        assert importer.attempts == 0  # lines wait for the flush
        assert await sink.flush()
        return sink

    sink = asyncio.run(scenario())
    assert importer.attempts == 3  # two failures retried in place, the third accepted
    assert importer.accepted == [result_lines(_result(0)) + result_lines(_result(1))]  # one import, nothing lost
    assert sink.lines == []
    assert sink.lines_written == len(importer.accepted[0]) and sink.imports == 1
    assert consumer_metrics().import_failures._value.get() == failures + 2
    assert producer.sent == []


def test_victoria_sink_stop_while_failing_keeps_the_lines(fake_producer: Callable[..., Any]) -> None:
    importer = FakeImporter(failures=10**6)

    async def scenario() -> None:
        stop = asyncio.Event()
        sink = _victoria(importer, fake_producer(), stop)
        assert await sink.add(TP0, _record(_result(7).model_dump_json().encode(), 0))
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.05)
        assert importer.attempts > 3
        assert not flushing.done()
        stop.set()
        assert await flushing is False
        assert sink.lines == result_lines(_result(7))  # kept for the final attempt
        assert sink.lines_written == 0 and importer.accepted == []
        assert await sink.add(TP0, _record(_result(8).model_dump_json().encode(), 1)) is False  # stopped
        assert sink.lines == result_lines(_result(7))
        # VictoriaMetrics back: the one attempt after the stop (the final flush) writes the lines
        importer.failures = 0
        assert await sink.flush()
        assert importer.accepted == [result_lines(_result(7))]
        assert sink.lines == []

    asyncio.run(scenario())


def test_victoria_sink_dead_letters_invalid_results(fake_producer: Callable[..., Any]) -> None:
    importer, producer = FakeImporter(), fake_producer(failures=1)

    async def scenario() -> VictoriaSink:
        stop = asyncio.Event()
        sink = _victoria(importer, producer, stop)
        assert await sink.add(TP0, _record(b'{"stream_id": 1}', 4))
        assert sink.lines == []  # a dead letter: no lines, its offset is still committed after the flush
        assert await sink.flush()
        return sink

    sink = asyncio.run(scenario())
    assert importer.attempts == 0
    [letter] = producer.sent_json()
    assert (letter["offset"], letter["service"], letter["reason"].split(":")[0]) == (
        4, "smap-victoria-consumer", "schema")
    assert [(t, k) for t, _, k in producer.sent] == [("dlq", b"SAT-001/A-1")]
    assert sink.handler.stats.dead_lettered == 1


def test_victoria_sink_stop_while_the_dlq_is_down_refuses_the_record(fake_producer: Callable[..., Any]) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        stop.set()
        sink = _victoria(FakeImporter(), fake_producer(failures=10**6), stop)
        assert await sink.add(TP0, _record(b"nope", 0)) is False

    asyncio.run(scenario())


@pytest.mark.parametrize("failures", [0, 3])
def test_victoria_sink_in_the_loop_commits_only_what_was_imported(
    failures: int, fake_producer: Callable[..., Any]
) -> None:
    values = {(TP0, o): _result(o).model_dump_json().encode() for o in range(5)}
    values[(TP1, 0)] = b"not json"
    values[(TP1, 1)] = _result(9, "A-2").model_dump_json().encode()
    importer, producer = FakeImporter(failures=failures), fake_producer()
    log: list[Any] = []

    async def scenario() -> tuple[LoopStats, list[dict[TopicPartition, int]]]:
        stop = asyncio.Event()
        consumer = FakeConsumer([{TP0: [0, 1, 2], TP1: [0, 1]}, {TP0: [3, 4]}], stop, then=stop.set,
                                value=lambda tp, o: values[(tp, o)])
        commits = Commits(log)
        sink = _victoria(importer, producer, stop)
        stats = await asyncio.wait_for(run_batches(consumer, sink, stop, batch_max=4,
                                                   linger_s=10.0, commit_offsets=commits), 5)
        return stats, commits.calls

    stats, calls = asyncio.run(scenario())
    assert calls == [{TP0: 3, TP1: 1}, {TP0: 5, TP1: 2}]
    assert importer.attempts == 2 + failures
    assert importer.accepted == [
        [line for o in range(3) for line in result_lines(_result(o))],
        result_lines(_result(9, "A-2")) + [line for o in (3, 4) for line in result_lines(_result(o))],
    ]
    assert len(producer.sent) == 1
    assert (stats.records, stats.flushes, stats.commits) == (7, 2, 2)


def test_a_hold_ends_after_hold_max_even_while_downstream_stays_busy() -> None:
    log: list[Any] = []
    stop = asyncio.Event()
    consumer = FakeConsumer([{TP0: [0]}] + [{}] * 40, stop)
    sink, commits = FakeSink(log), Commits(log)

    async def always_busy() -> bool:
        return True

    linger, hold_max = 0.02, 0.15
    stats = _run(run_batches(consumer, sink, stop, batch_max=100, linger_s=linger, commit_offsets=commits,
                             on_commit=stop.set, hold=always_busy, hold_max_s=hold_max))
    waited = sink.flushed_at[0] - sink.added_at[0]
    assert linger + hold_max <= waited < linger + hold_max + 0.3
    assert stats.holds >= 3 and commits.calls == [{TP0: 1}]
