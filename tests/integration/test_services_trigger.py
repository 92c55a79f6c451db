"""Trigger against the real services: Tansu (Kafka API) on localhost:9092 and RabbitMQ on 5672.

Valid frames must land, in order, on their shard queues (read back with kombu) and invalid ones in the
DLQ with their reasons; offsets are committed once everything was handled. A throwaway RabbitMQ vhost
keeps running workers from eating the test's tasks (and the test from eating theirs).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from kafka_io import committed_and_end, produce, read_topic
from kombu.connection import Connection

from smap_shared.routing import TASK_NAME, queue_for, queue_name
from smap_shared.schemas import DeadLetter, InferenceTask, TelemetryMessage, sensor_keys, utc_now
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.celery_app import make_celery_app, shard_queues
from smap_shared.streaming.metrics import trigger_metrics
from smap_shared.streaming.trigger import CeleryPublisher, run_trigger

pytestmark = pytest.mark.integration

BOOTSTRAP = "localhost:9092"
SHARDS = 3


def _frame(sat: str, entity: str, index: int, n: int = 25) -> dict[str, Any]:
    keys = sensor_keys(n)
    msg = TelemetryMessage(
        satellite_id=sat, entity=entity, timestamp=utc_now(), index=index,
        sensors={k: index + i / 100 for i, k in enumerate(keys)}, ground_truth_labels=dict.fromkeys(keys, 0),
    )
    return json.loads(msg.model_dump_json())  # type: ignore[no-any-return]


def _drain_queues(broker_url: str) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Every message of every shard queue: (headers, kwargs), in queue order."""
    out: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    with _connect(broker_url) as conn:
        channel = conn.default_channel
        for k in range(SHARDS):
            name = queue_name(k)
            got = out.setdefault(name, [])
            while (msg := channel.basic_get(name, no_ack=True)) is not None:
                body = json.loads(msg.body)
                got.append((dict(msg.headers), body[1]))  # Celery protocol 2: [args, kwargs, embed]
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


def test_trigger_routes_valid_frames_and_dead_letters_invalid_ones(broker_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = TriggerSettings(
        kafka_bootstrap_servers=BOOTSTRAP, telemetry_topic=f"it-telemetry-{run}", dlq_topic=f"it-dlq-{run}",
        trigger_group_id=f"it-trigger-{run}", celery_broker_url=broker_url, inference_shards=SHARDS,
    )
    streams = [("SAT-001", "A-1"), ("SAT-002", "D-1"), ("SAT-003", "P-1")]
    valid = [
        (f"{s}/{e}".encode(), json.dumps(_frame(s, e, i)).encode()) for i in range(4) for s, e in streams
    ]
    nan_frame = json.dumps(_frame("SAT-001", "A-1", 99)).replace('"sensor_1": 99.01', '"sensor_1": NaN')
    invalid = {
        "invalid_json": b"{not json",
        "non_finite": nan_frame.encode(),
        "sensor_count": json.dumps(_frame("SAT-001", "A-2", 0, n=24)).encode(),
        "unknown_stream": json.dumps(_frame("SAT-001", "P-1", 0)).encode(),
        "schema": json.dumps({"satellite_id": "SAT-001"}).encode(),
    }
    assert "NaN" in nan_frame
    records = valid[:5] + [(b"bad", v) for v in invalid.values()] + valid[5:]

    _declare_queues(broker_url)

    async def scenario() -> None:
        await produce(BOOTSTRAP, settings.telemetry_topic, records)
        stop = asyncio.Event()
        trigger = asyncio.create_task(run_trigger(settings, stop))
        letters = await read_topic(BOOTSTRAP, settings.dlq_topic, len(invalid), timeout_s=20)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while _queue_depths(broker_url) < len(valid) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        stats = await asyncio.wait_for(trigger, 10)
        assert (stats.published, stats.dead_lettered) == (len(valid), len(invalid))

        reasons = {DeadLetter.model_validate_json(raw).reason.split(":")[0] for raw in letters}
        assert reasons == set(invalid)
        letter = next(DeadLetter.model_validate_json(r) for r in letters if b"invalid_json" in r)
        assert (letter.source_topic, letter.raw_payload, letter.key) == (
            settings.telemetry_topic, "{not json", "bad"
        )

        committed, end = await committed_and_end(BOOTSTRAP, settings.telemetry_topic, settings.trigger_group_id)
        assert sum(end.values()) == len(records)
        assert {p: committed[p] or 0 for p in end} == end  # everything handled was committed

    asyncio.run(asyncio.wait_for(scenario(), 40))

    queues = _drain_queues(broker_url)
    assert sum(len(v) for v in queues.values()) == len(valid)
    seen: dict[str, list[int]] = {}
    for queue, messages in queues.items():
        for headers, kwargs in messages:
            assert headers["task"] == TASK_NAME
            task = InferenceTask.model_validate(kwargs)
            assert queue == queue_for(task.stream_id, SHARDS)
            assert len(task.sensor_values) == 25
            assert task.sensor_values[1] == task.index + 0.01
            seen.setdefault(task.stream_id, []).append(task.index)
    assert seen == {f"{s}/{e}": [0, 1, 2, 3] for s, e in streams}  # each stream in order on its queue


def test_trigger_commits_nothing_while_rabbitmq_is_unreachable(broker_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    settings = TriggerSettings(
        kafka_bootstrap_servers=BOOTSTRAP, telemetry_topic=f"it-telemetry-{run}", dlq_topic=f"it-dlq-{run}",
        trigger_group_id=f"it-trigger-{run}", celery_broker_url="amqp://guest:guest@127.0.0.1:1//",
        inference_shards=SHARDS,
    )
    # RabbitMQ "comes back" by pointing the running trigger's publisher at the real broker
    publisher = CeleryPublisher(make_celery_app(settings))
    records = [(b"SAT-001/A-1", json.dumps(_frame("SAT-001", "A-1", i)).encode()) for i in range(3)]
    retries = trigger_metrics().publish_retries

    async def scenario() -> None:
        await produce(BOOTSTRAP, settings.telemetry_topic, records)
        before = retries._value.get()
        stop = asyncio.Event()
        trigger = asyncio.create_task(run_trigger(settings, stop, publisher=publisher))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while retries._value.get() < before + 2 and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert retries._value.get() >= before + 2  # the first frame is retried in place
        committed, _ = await committed_and_end(BOOTSTRAP, settings.telemetry_topic, settings.trigger_group_id)
        assert not any(committed.values())  # nothing committed while the frames are not in RabbitMQ
        assert _queue_depths(broker_url) == 0

        publisher.app = make_celery_app(settings.model_copy(update={"celery_broker_url": broker_url}))
        deadline = loop.time() + 20
        while _queue_depths(broker_url) < len(records) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        stats = await asyncio.wait_for(trigger, 15)
        assert stats.published == len(records)
        committed, end = await committed_and_end(BOOTSTRAP, settings.telemetry_topic, settings.trigger_group_id)
        assert {p: committed[p] or 0 for p in end} == end

    _declare_queues(broker_url)
    _drain_queues(broker_url)
    asyncio.run(asyncio.wait_for(scenario(), 60))
    queued = _drain_queues(broker_url)[queue_for("SAT-001/A-1", SHARDS)]
    assert [InferenceTask.model_validate(kw).index for _, kw in queued] == [0, 1, 2]  # in order, once each
