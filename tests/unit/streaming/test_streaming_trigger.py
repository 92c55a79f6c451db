"""The trigger's TelemetrySink with a fake Celery publisher and a fake Kafka producer: `add` validates a
record into its shard's pending batch (or its dead letter), `flush` publishes one InferenceBatch per shard
(each stream's frames in order) and sends the dead letters, retrying in place; a stop leaves what is not
durable pending."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import TopicPartition

from smap_shared.fleet import Fleet, default_fleet
from smap_shared.routing import ShardMap, queue_name
from smap_shared.schemas import DeadLetter, InferenceBatch
from smap_shared.settings import STATE_HISTORY, TriggerSettings
from smap_shared.streaming.metrics import trigger_metrics
from smap_shared.streaming.trigger import TelemetrySink

SHARDS = 4
TP = TopicPartition("telemetry", 3)
ROUTES = ShardMap(default_fleet().deployed, SHARDS)


def shard_of(stream_id: str) -> int:
    satellite_id, _, entity = stream_id.partition("/")
    return ROUTES.shard(satellite_id, entity)


def queue_for(stream_id: str) -> str:
    return queue_name(shard_of(stream_id))


class FakePublisher:
    """publish that fails `failures` times first (for every queue in `failing_queues`, or all), then records
    (batch, queue). Called on the sink's executor thread."""

    def __init__(self, failures: int = 0, failing_queues: set[str] | None = None) -> None:
        self.failures = failures
        self.failing_queues = failing_queues
        self.published: list[tuple[InferenceBatch, str]] = []
        self.attempts: list[str] = []
        self.threads: set[str] = set()
        self.queued: dict[str, int] = {}  # queue -> tasks running or waiting there
        self.asked: list[list[str]] = []
        self.closed = False

    def publish(self, batch: InferenceBatch, queue: str) -> None:
        self.attempts.append(queue)
        self.threads.add(threading.current_thread().name)
        if self.failures > 0 and (self.failing_queues is None or queue in self.failing_queues):
            self.failures -= 1
            raise ConnectionResetError("rabbitmq down")
        self.published.append((batch, queue))

    def busy(self, queues: Sequence[str]) -> bool:
        self.threads.add(threading.current_thread().name)
        self.asked.append(list(queues))
        return any(self.queued.get(q, 0) > 0 for q in queues)

    def close(self) -> None:
        self.closed = True

    def streams(self) -> list[tuple[str, list[tuple[str, int]]]]:
        return [(q, [(f.stream_id, f.index) for f in b.frames]) for b, q in self.published]


Records = Sequence[Any]


def _sink(fleet: Fleet, widths: dict[str, int], publisher: FakePublisher, producer: Any,
          executor: ThreadPoolExecutor, stop: asyncio.Event) -> TelemetrySink:
    settings = TriggerSettings(inference_shards=SHARDS, dlq_topic="dlq")
    return TelemetrySink(settings, fleet, widths, publisher, producer, executor, stop)


def _run(fleet: Fleet, widths: dict[str, int], publisher: FakePublisher, producer: Any,
         scenario: Callable[[TelemetrySink, asyncio.Event], Any]) -> Any:
    async def go() -> Any:
        with ThreadPoolExecutor(1, thread_name_prefix="celery-publish") as executor:
            stop = asyncio.Event()
            sink = _sink(fleet, widths, publisher, producer, executor, stop)
            return await asyncio.wait_for(scenario(sink, stop), 10)

    return asyncio.run(go())


async def _add_all(sink: TelemetrySink, records: Records) -> list[bool]:
    return [await sink.add(TP, r) for r in records]


#: Streams of 4 shards (SHARDS = 4; routing by model, in the fleet's deployed order): D-1 and G-1 share shard 1.
STREAMS = [("SAT-001", "A-1"), ("SAT-002", "D-1"), ("SAT-001", "A-3"), ("SAT-003", "G-1"), ("SAT-003", "P-2")]


def test_the_streams_cover_every_shard() -> None:
    shards = [shard_of(f"{s}/{e}") for s, e in STREAMS]
    assert sorted(set(shards)) == [0, 1, 2, 3]
    assert shards[1] == shards[3] == 1  # two streams in one shard's batch


def test_one_batch_per_shard_with_each_streams_frames_in_order(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(), fake_producer()
    # 3 rounds over the streams, interleaved as they arrive on the topic
    frames = [frame(satellite_id=s, entity=e, index=i) for i in range(3) for s, e in STREAMS]
    records = [record(json.dumps(f).encode(), topic=TP.topic, partition=TP.partition, offset=o)
               for o, f in enumerate(frames)]
    before = trigger_metrics().messages.labels("published")._value.get()

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> TelemetrySink:
        assert await _add_all(sink, records) == [True] * len(records)
        assert publisher.attempts == []  # nothing is published before the flush
        assert sorted(sink.pending) == [0, 1, 2, 3]
        assert await sink.flush()
        return sink

    sink = _run(fleet, widths, publisher, producer, scenario)
    expected = []
    for shard in range(SHARDS):  # published in shard order
        mine = [(f"{f['satellite_id']}/{f['entity']}", f["index"]) for f in frames
                if shard_of(f"{f['satellite_id']}/{f['entity']}") == shard]
        expected.append((queue_name(shard), mine))
    assert publisher.streams() == expected
    assert publisher.streams()[1] == ("smap-inference-shard-1", [
        ("SAT-002/D-1", 0), ("SAT-003/G-1", 0), ("SAT-002/D-1", 1), ("SAT-003/G-1", 1), ("SAT-002/D-1", 2),
        ("SAT-003/G-1", 2)])
    for batch, queue in publisher.published:
        assert all(queue_for(f.stream_id) == queue for f in batch.frames)
    task = publisher.published[0][0].frames[0]
    assert task.sensor_values == [float(i) / 10 for i in range(25)]
    assert task.ground_truth_labels == frames[0]["ground_truth_labels"]
    assert publisher.threads and all(t.startswith("celery-publish") for t in publisher.threads)
    assert producer.sent == []
    assert sink.pending == {} and sink.letters == []
    assert (sink.stats.published, sink.stats.tasks, sink.stats.dead_lettered) == (15, 4, 0)
    assert trigger_metrics().messages.labels("published")._value.get() == before + 15


def test_a_flush_publishes_only_what_was_added_since_the_last_one(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher = FakePublisher()

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> None:
        assert await sink.flush()  # nothing pending: nothing to do
        assert publisher.attempts == []
        await sink.add(TP, record(json.dumps(frame(index=0)).encode()))
        assert await sink.flush()
        await sink.add(TP, record(json.dumps(frame(index=1)).encode(), offset=1))
        assert await sink.flush()

    _run(fleet, widths, publisher, fake_producer(), scenario)
    queue = queue_for("SAT-001/A-1")
    assert publisher.streams() == [(queue, [("SAT-001/A-1", 0)]), (queue, [("SAT-001/A-1", 1)])]


def test_publisher_failures_are_retried_in_place(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    shard1 = queue_for("SAT-002/D-1")
    publisher = FakePublisher(failures=2, failing_queues={shard1})
    retries = trigger_metrics().publish_retries._value.get()
    frames = [frame(satellite_id=s, entity=e, index=i) for i in range(2) for s, e in STREAMS]

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> None:
        await _add_all(sink, [record(json.dumps(f).encode(), offset=o) for o, f in enumerate(frames)])
        assert await sink.flush()

    _run(fleet, widths, publisher, fake_producer(), scenario)
    # shard 0 once, shard 1 three times (two failures), then shards 2 and 3: nothing overtakes a failing batch
    assert publisher.attempts == [queue_name(0), shard1, shard1, shard1, queue_name(2), queue_name(3)]
    assert [q for _, q in publisher.published] == [queue_name(s) for s in range(SHARDS)]
    assert [len(b.frames) for b, _ in publisher.published] == [2, 4, 2, 2]  # each batch published once
    assert trigger_metrics().publish_retries._value.get() == retries + 2


def test_dead_letters_are_sent_at_flush(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(), fake_producer(failures=1)
    unknown = json.dumps(frame(satellite_id="SAT-404")).encode()
    short = json.dumps(frame(sensors={"sensor_0": 1.0})).encode()
    records = [
        record(unknown, topic="telemetry", partition=3, offset=17),
        record(json.dumps(frame(index=5)).encode(), topic="telemetry", partition=3, offset=18),
        record(b"{not json", topic="telemetry", partition=3, offset=19, key=None),
        record(short, topic="telemetry", partition=3, offset=20, key=b"SAT-001/A-1"),
    ]
    before = trigger_metrics().dead_letters.labels("unknown_stream")._value.get()

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> TelemetrySink:
        assert await _add_all(sink, records) == [True] * 4
        assert producer.calls == 0  # dead letters wait for the flush too
        assert len(sink.letters) == 3
        assert await sink.flush()
        return sink

    sink = _run(fleet, widths, publisher, producer, scenario)
    assert producer.calls == 4  # one failure retried in place
    assert publisher.streams() == [(queue_for("SAT-001/A-1"), [("SAT-001/A-1", 5)])]
    assert [(topic, key) for topic, _, key in producer.sent] == [
        ("dlq", b"SAT-001/A-1"), ("dlq", None), ("dlq", b"SAT-001/A-1")]
    letters = [DeadLetter.model_validate_json(v or b"") for _, v, _ in producer.sent]
    first = letters[0]
    assert first.reason.startswith("unknown_stream: unknown satellite 'SAT-404'")
    assert (first.source_topic, first.partition, first.offset, first.key) == ("telemetry", 3, 17, "SAT-001/A-1")
    assert first.raw_payload == unknown.decode() and first.payload_encoding == "utf-8"
    assert first.service == "smap-inference-trigger"
    assert first.payload_size == len(unknown) and not first.payload_truncated
    assert letters[1].reason.startswith("invalid_json: ") and (letters[1].offset, letters[1].key) == (19, None)
    assert letters[2].reason == "sensor_count: A-1 has 25 sensors, message has 1"
    assert letters[2].offset == 20
    assert sink.letters == []
    assert (sink.stats.published, sink.stats.tasks, sink.stats.dead_lettered) == (1, 1, 3)
    assert trigger_metrics().dead_letters.labels("unknown_stream")._value.get() == before + 1


def test_stop_while_the_broker_is_down_keeps_the_batch_pending(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    failing = queue_for("SAT-002/D-1")  # shard 1
    publisher = FakePublisher(failures=10**6, failing_queues={failing})
    producer = fake_producer()
    frames = [frame(satellite_id=s, entity=e, index=i) for i in range(2) for s, e in STREAMS]

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> TelemetrySink:
        await _add_all(sink, [record(json.dumps(f).encode(), offset=o) for o, f in enumerate(frames)])
        await sink.add(TP, record(b"[]", offset=99))  # a dead letter behind the batches
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0.25)  # backoff 0.1 s, 0.2 s: a few attempts
        assert not flushing.done()
        stop.set()
        assert await flushing is False
        # shard 0 was confirmed (and is not published again); shard 1 and everything behind it stay pending
        assert sorted(sink.pending) == [1, 2, 3]
        assert [f.index for f in sink.pending[1]] == [0, 0, 1, 1]
        assert len(sink.letters) == 1 and producer.calls == 0
        # the broker is back: the next flush (one attempt after the stop: the final flush) delivers the rest
        publisher.failures = 0
        assert await sink.flush()
        return sink

    sink = _run(fleet, widths, publisher, producer, scenario)
    assert publisher.attempts.count(queue_name(0)) == 1
    assert publisher.attempts.count(failing) >= 3
    assert [q for _, q in publisher.published] == [queue_name(s) for s in range(SHARDS)]
    assert sink.pending == {} and sink.letters == []
    assert len(producer.sent) == 1 and sink.stats.dead_lettered == 1


def test_stop_while_the_dlq_is_down_keeps_the_letters(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(), fake_producer(failures=10**6)

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> TelemetrySink:
        await sink.add(TP, record(json.dumps(frame()).encode(), offset=0))
        await sink.add(TP, record(b"\xff", offset=1))
        await sink.add(TP, record(b"null", offset=2))
        stop.set()
        assert await sink.flush() is False
        assert sink.pending == {}  # the batch was confirmed before the letters were tried
        assert len(sink.letters) == 2
        producer.failures = 0
        assert await sink.flush()
        return sink

    sink = _run(fleet, widths, publisher, producer, scenario)
    assert len(publisher.published) == 1
    letters = [DeadLetter.model_validate_json(v or b"") for _, v, _ in producer.sent]
    assert [(d.offset, d.reason.split(":")[0]) for d in letters] == [(1, "invalid_utf8"), (2, "schema")]
    assert letters[0].payload_encoding == "base64"
    assert sink.letters == [] and sink.stats.dead_lettered == 2


@pytest.mark.parametrize("failures", [0, 1])
def test_a_stop_before_the_flush_still_makes_one_attempt(
    failures: int, frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet,
    widths: dict[str, int], fake_producer: Callable[..., Any],
) -> None:
    publisher = FakePublisher(failures=failures)

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> bool:
        await sink.add(TP, record(json.dumps(frame()).encode()))
        stop.set()
        return await sink.flush()

    assert _run(fleet, widths, publisher, fake_producer(), scenario) is (failures == 0)
    assert len(publisher.attempts) == 1


def test_queued_ahead_asks_only_the_queues_of_shards_with_pending_frames(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(), fake_producer()
    a1 = record(json.dumps(frame(satellite_id="SAT-001", entity="A-1", index=0)).encode(),
                topic=TP.topic, partition=TP.partition, offset=0)
    shard = shard_of("SAT-001/A-1")
    others = [queue_name(k) for k in range(SHARDS) if k != shard]

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> list[bool]:
        seen = [await sink.queued_ahead()]  # nothing pending: nothing to hold
        await sink.add(TP, a1)
        publisher.queued = dict.fromkeys(others, 5)  # other shards' workers behind: not A-1's business
        seen.append(await sink.queued_ahead())
        publisher.queued[queue_name(shard)] = 1  # A-1's worker has not taken the last task yet
        seen.append(await sink.queued_ahead())
        return seen

    assert _run(fleet, widths, publisher, producer, scenario) == [False, False, True]
    assert publisher.asked == [[queue_name(shard)]] * 2  # only the pending shard's queue, nothing when idle
    assert all(t.startswith("celery-publish") for t in publisher.threads)  # the publishing thread, in order


def test_no_task_holds_more_frames_of_one_stream_than_the_model_remembers(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    """A backlog (a burst, or catching up after an outage) puts many frames of one stream in a shard's batch;
    a task redelivered after a crash is recognised row by row only while it holds no more of a stream's
    frames than its model keeps outputs of (STATE_HISTORY), so the batch goes out as several ordered tasks."""
    publisher, producer = FakePublisher(), fake_producer()
    per_stream = 4
    frames = [frame(satellite_id=s, entity=e, index=i) for i in range(10) for s, e in STREAMS[1:4:2]]  # D-1, G-1
    records = [record(json.dumps(f).encode(), offset=o) for o, f in enumerate(frames)]

    async def scenario(sink: TelemetrySink, stop: asyncio.Event) -> None:
        await _add_all(sink, records)
        assert await sink.flush()

    with ThreadPoolExecutor(1, thread_name_prefix="celery-publish") as executor:
        async def go() -> None:
            stop = asyncio.Event()
            settings = TriggerSettings(inference_shards=SHARDS, dlq_topic="dlq",
                                       trigger_stream_frames_max=per_stream)
            sink = TelemetrySink(settings, fleet, widths, publisher, producer, executor, stop)
            await scenario(sink, stop)
            assert sink.pending == {}

        asyncio.run(go())
    tasks = publisher.streams()
    assert [q for q, _ in tasks] == [queue_for("SAT-002/D-1")] * 3  # one shard, three tasks, in order
    assert [len(t) for _, t in tasks] == [8, 8, 4]
    for _, t in tasks:
        assert max(Counter(s for s, _ in t).values()) <= per_stream
    # every frame once, each stream's indices in order across the tasks
    flat = [f for _, t in tasks for f in t]
    for sid in ("SAT-002/D-1", "SAT-003/G-1"):
        assert [i for s, i in flat if s == sid] == list(range(10))
    assert TriggerSettings().trigger_stream_frames_max == STATE_HISTORY  # the models' memory, by default
