"""Trigger against the real services: a private Tansu broker (Kafka API) and RabbitMQ on 5672.

Valid frames must land as micro-batch tasks (`run_omnianomaly_batch`, kwargs {"frames": [...]}) on their
shard queues (read back with kombu and decoded as Celery messages): every batch on the shard of all its
frames, at most TRIGGER_BATCH_MAX frames, each stream's frames in order and every valid frame exactly once.
Invalid ones go to the DLQ with their reasons; offsets are committed once everything was handled, and never
while RabbitMQ is unreachable. A throwaway RabbitMQ vhost keeps running workers from eating the test's tasks
(and the test from eating theirs).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alert_harness import tansu
from kafka_io import committed_and_end, produce, read_topic
from kombu.connection import Connection

from smap_shared.fleet import load_fleet
from smap_shared.routing import BATCH_TASK_NAME, ShardMap, queue_name
from smap_shared.schemas import DeadLetter, InferenceBatch, InferenceTask, TelemetryMessage, sensor_keys, utc_now
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.celery_app import TASK_CONTENT_TYPE, ShardBusy, make_celery_app, shard_queues
from smap_shared.streaming.metrics import trigger_metrics
from smap_shared.streaming.trigger import CeleryPublisher, TriggerStats, run_trigger
from smap_shared.streaming.validation import MAX_TELEMETRY_BYTES

pytestmark = pytest.mark.integration

SHARDS = 3
BATCH_MAX = 5
FRAMES = 6  # per stream
ROUTES = ShardMap(load_fleet(None).deployed, SHARDS)


def queue_for(stream_id: str) -> str:
    satellite_id, _, entity = stream_id.partition("/")
    return ROUTES.queue(satellite_id, entity)


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tansu(tmp_path_factory.mktemp("tansu")) as url:
        yield url


def _frame(sat: str, entity: str, index: int, n: int = 25) -> dict[str, Any]:
    keys = sensor_keys(n)
    msg = TelemetryMessage(
        satellite_id=sat, entity=entity, timestamp=utc_now(), index=index,
        sensors={k: index + i / 100 for i, k in enumerate(keys)},
        ground_truth_labels=dict.fromkeys(keys, index % 2),
    )
    return json.loads(msg.model_dump_json())  # type: ignore[no-any-return]


def _drain_queues(broker_url: str) -> dict[str, list[InferenceBatch]]:
    """Every task of every shard queue, in queue order: each must be a batch task (Celery protocol 2)."""
    out: dict[str, list[InferenceBatch]] = {}
    with _connect(broker_url) as conn:
        channel = conn.default_channel
        for k in range(SHARDS):
            name = queue_name(k)
            got = out.setdefault(name, [])
            while (msg := channel.basic_get(name, no_ack=True)) is not None:
                assert msg.headers["task"] == BATCH_TASK_NAME
                assert msg.content_type == TASK_CONTENT_TYPE  # msgspec's JSON, plain JSON on the wire:
                args, kwargs, _embed = json.loads(msg.body)  # protocol 2: [args, kwargs, embed]
                assert args == [] and list(kwargs) == ["frames"]
                got.append(InferenceBatch.model_validate(kwargs))
    return out


def _connect(url: str) -> Any:
    return Connection(url)  # type: ignore[no-untyped-call]


def _declare_queues(broker_url: str) -> None:
    """Declared as the workers do: Celery's own declaration must agree with these arguments."""
    with _connect(broker_url) as conn:
        for queue in shard_queues(SHARDS):
            queue.bind(conn.default_channel).declare()  # type: ignore[no-untyped-call]


def _queue_depths(broker_url: str) -> int:
    total = 0
    with _connect(broker_url) as conn:
        channel = conn.default_channel
        for k in range(SHARDS):
            _, count, _ = channel.queue_declare(queue_name(k), passive=True)
            total += count
    return total



def test_the_publishers_queue_probe_counts_the_tasks_no_worker_took(broker_url: str) -> None:
    """The adaptive batches' probe on the real RabbitMQ: a queue's ready tasks, 0 for an unknown queue or an
    unreachable broker (the probe never holds the trigger on a fault), and the probe survives those."""
    _declare_queues(broker_url)
    _drain_queues(broker_url)
    settings = TriggerSettings(celery_broker_url=broker_url, inference_shards=SHARDS)
    app = make_celery_app(settings)
    publisher = CeleryPublisher(app)
    try:
        assert publisher.waiting(queue_name(1)) == 0
        frame = InferenceTask.from_telemetry(TelemetryMessage.model_validate(_frame("SAT-001", "A-1", 0)))
        for _ in range(2):
            publisher.publish(InferenceBatch(frames=[frame]), queue_name(1))
        assert publisher.waiting(queue_name(1)) == 2
        assert publisher.waiting(queue_name(2)) == 0
        assert publisher.waiting("no-such-queue") == 0  # the passive declare fails: the probe says 0 ...
        assert publisher.waiting(queue_name(1)) == 2  # ... and reconnects for the next question
        assert len(_drain_queues(broker_url)[queue_name(1)]) == 2
        assert publisher.waiting(queue_name(1)) == 0
    finally:
        publisher.close()
        app.close()
    down = TriggerSettings(celery_broker_url="amqp://guest:guest@127.0.0.1:1//", inference_shards=SHARDS)
    unreachable = CeleryPublisher(make_celery_app(down))
    assert unreachable.waiting(queue_name(0)) == 0


def test_a_worker_is_busy_while_it_runs_a_task_and_the_flag_never_blocks(broker_url: str) -> None:
    """ShardBusy on the real Redis: set for the block the worker runs, cleared after it (also when the task
    raised), read by the trigger's publisher together with the queue's ready count; without Redis every
    answer is "not busy" and the block still runs."""
    _declare_queues(broker_url)
    _drain_queues(broker_url)
    backend = "redis://localhost:6379/12"
    worker_side, trigger_side = ShardBusy(backend, broker_url), ShardBusy(backend, broker_url)
    elsewhere = ShardBusy(backend, "amqp://guest:guest@localhost:5672/another-system")
    app = make_celery_app(TriggerSettings(celery_broker_url=broker_url, inference_shards=SHARDS))
    publisher = CeleryPublisher(app, trigger_side)
    q0, q1 = queue_name(0), queue_name(1)
    try:
        assert publisher.busy([q0, q1]) is False
        with worker_side.running(q1):
            assert trigger_side.busy([q0, q1]) == [False, True]
            assert elsewhere.busy([q1]) == [False]  # another vhost's trigger never sees this worker
            assert publisher.busy([q1]) is True and publisher.busy([q0]) is False
        assert publisher.busy([q0, q1]) is False
        with pytest.raises(RuntimeError), worker_side.running(q0):
            raise RuntimeError("task failed")
        assert trigger_side.busy([q0]) == [False]  # cleared on the way out
        frame = InferenceTask.from_telemetry(TelemetryMessage.model_validate(_frame("SAT-001", "A-1", 0)))
        publisher.publish(InferenceBatch(frames=[frame]), q0)  # waiting, no worker: busy by the queue
        assert publisher.busy([q0]) is True
        _drain_queues(broker_url)
    finally:
        publisher.close()
        worker_side.close()
        elsewhere.close()
        app.close()
    no_redis = ShardBusy("redis://127.0.0.1:1/0", broker_url, timeout_s=0.2)
    ran = []
    with no_redis.running(q0):
        ran.append(True)
    assert ran == [True] and no_redis.busy([q0, q1]) == [False, False]

async def _wait_committed(bootstrap: str, settings: TriggerSettings, records: int, timeout_s: float) -> None:
    """Until the group committed every one of the topic's `records` records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        committed, end = await committed_and_end(bootstrap, settings.telemetry_topic, settings.trigger_group_id)
        if sum(end.values()) == records and {p: committed[p] or 0 for p in end} == end:
            return
        assert loop.time() < deadline, f"not all committed: {committed} of {end}"
        await asyncio.sleep(0.2)


def test_trigger_batches_valid_frames_per_shard_and_dead_letters_invalid_ones(
    broker_url: str, bootstrap: str
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = TriggerSettings(
        kafka_bootstrap_servers=bootstrap, telemetry_topic=f"it-telemetry-{run}", dlq_topic=f"it-dlq-{run}",
        trigger_group_id=f"it-trigger-{run}", celery_broker_url=broker_url, inference_shards=SHARDS,
        trigger_batch_max=BATCH_MAX, trigger_linger_ms=50,
    )
    streams = load_fleet(None).streams()  # every stream of the fleet: all three shards get some
    assert {queue_for(f"{s}/{e}") for s, e in streams} == {queue_name(k) for k in range(SHARDS)}
    frames = {(s, e, i): _frame(s, e, i) for i in range(FRAMES) for s, e in streams}
    valid = [(f"{s}/{e}".encode(), json.dumps(f).encode()) for (s, e, _), f in frames.items()]
    nan_frame = json.dumps(_frame("SAT-001", "A-1", 99)).replace('"sensor_1": 99.01', '"sensor_1": NaN')
    invalid = {
        "invalid_json": b"{not json",
        "non_finite": nan_frame.encode(),
        "sensor_count": json.dumps(_frame("SAT-001", "A-2", 0, n=24)).encode(),
        "unknown_stream": json.dumps(_frame("SAT-001", "P-1", 0)).encode(),
        "schema": json.dumps({"satellite_id": "SAT-001"}).encode(),
        "too_large": b'{"satellite_id": "' + b"x" * (MAX_TELEMETRY_BYTES + 1) + b'"}',
    }
    assert "NaN" in nan_frame
    records = valid[:7] + [(b"bad", v) for v in invalid.values()] + valid[7:]  # invalid ones amid valid ones

    _declare_queues(broker_url)

    async def scenario() -> None:
        await produce(bootstrap, settings.telemetry_topic, records)
        stop = asyncio.Event()
        trigger = asyncio.create_task(run_trigger(settings, stop))
        letters = await read_topic(bootstrap, settings.dlq_topic, len(invalid), timeout_s=20)
        await _wait_committed(bootstrap, settings, len(records), timeout_s=20)
        stop.set()
        stats = await asyncio.wait_for(trigger, 10)
        assert (stats.published, stats.dead_lettered) == (len(valid), len(invalid))
        stats_box.append(stats)

        assert len(letters) == len(invalid)
        by_kind = {DeadLetter.model_validate_json(raw).reason.split(":")[0]: DeadLetter.model_validate_json(raw)
                   for raw in letters}
        assert set(by_kind) == set(invalid)
        letter = by_kind["invalid_json"]
        assert (letter.source_topic, letter.raw_payload, letter.key) == (
            settings.telemetry_topic, "{not json", "bad"
        )
        big = by_kind["too_large"]
        assert (big.payload_size, big.payload_truncated) == (len(invalid["too_large"]), True)

        committed, end = await committed_and_end(bootstrap, settings.telemetry_topic, settings.trigger_group_id)
        assert sum(end.values()) == len(records)
        assert {p: committed[p] or 0 for p in end} == end  # everything handled was committed

    stats_box: list[TriggerStats] = []
    asyncio.run(asyncio.wait_for(scenario(), 60))
    [stats] = stats_box

    queues = _drain_queues(broker_url)
    batches = [(queue, batch) for queue, messages in queues.items() for batch in messages]
    assert len(batches) == stats.tasks
    # micro-batches: at most BATCH_MAX frames each, several frames in some, every frame on its stream's shard
    assert all(1 <= len(b.frames) <= BATCH_MAX for _, b in batches)
    assert max(len(b.frames) for _, b in batches) > 1
    assert all(queue == queue_for(f.stream_id) for queue, b in batches for f in b.frames)
    seen: dict[str, list[int]] = {}
    for _, batch in batches:
        for task in batch.frames:
            sent = TelemetryMessage.model_validate(frames[(task.satellite_id, task.entity, task.index)])
            assert task == InferenceTask.from_telemetry(sent)  # values in sensor order, timestamp, labels
            seen.setdefault(task.stream_id, []).append(task.index)
    # each stream's frames in order on its queue, every valid frame exactly once
    assert seen == {f"{s}/{e}": list(range(FRAMES)) for s, e in streams}


def test_trigger_commits_nothing_while_rabbitmq_is_unreachable(broker_url: str, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = TriggerSettings(
        kafka_bootstrap_servers=bootstrap, telemetry_topic=f"it-telemetry-{run}", dlq_topic=f"it-dlq-{run}",
        trigger_group_id=f"it-trigger-{run}", celery_broker_url="amqp://guest:guest@127.0.0.1:1//",
        inference_shards=SHARDS, trigger_batch_max=BATCH_MAX,
    )
    # RabbitMQ "comes back" by pointing the running trigger's publisher at the real broker
    publisher = CeleryPublisher(make_celery_app(settings))
    records = [(b"SAT-001/A-1", json.dumps(_frame("SAT-001", "A-1", i)).encode()) for i in range(3)]
    records += [(b"SAT-002/D-1", json.dumps(_frame("SAT-002", "D-1", i)).encode()) for i in range(3)]
    retries = trigger_metrics().publish_retries

    async def scenario() -> TriggerStats:
        await produce(bootstrap, settings.telemetry_topic, records)
        before = retries._value.get()
        stop = asyncio.Event()
        trigger = asyncio.create_task(run_trigger(settings, stop, publisher=publisher))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while retries._value.get() < before + 3 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert retries._value.get() >= before + 3  # the first batch is retried in place
        committed, _ = await committed_and_end(bootstrap, settings.telemetry_topic, settings.trigger_group_id)
        assert not any(committed.values())  # nothing committed while the frames are not in RabbitMQ
        assert _queue_depths(broker_url) == 0
        assert not trigger.done()

        publisher.app = make_celery_app(settings.model_copy(update={"celery_broker_url": broker_url}))
        await _wait_committed(bootstrap, settings, len(records), timeout_s=20)
        stop.set()
        stats = await asyncio.wait_for(trigger, 15)
        assert stats.published == len(records)
        return stats

    _declare_queues(broker_url)
    _drain_queues(broker_url)
    stats = asyncio.run(asyncio.wait_for(scenario(), 60))
    queues = _drain_queues(broker_url)
    assert sum(len(batches) for batches in queues.values()) == stats.tasks
    for stream in ("SAT-001/A-1", "SAT-002/D-1"):
        queued = [f.index for b in queues[queue_for(stream)] for f in b.frames if f.stream_id == stream]
        assert queued == [0, 1, 2]  # in order, once each
