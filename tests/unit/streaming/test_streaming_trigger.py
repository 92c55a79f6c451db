"""The trigger's per-record handling with a fake Celery publisher and a fake Kafka producer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from smap_shared.fleet import Fleet
from smap_shared.routing import queue_for
from smap_shared.schemas import DeadLetter, InferenceTask
from smap_shared.settings import TriggerSettings
from smap_shared.streaming.trigger import TelemetryHandler


class FakePublisher:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[tuple[InferenceTask, str]] = []
        self.attempts = 0

    def publish(self, task: InferenceTask, queue: str) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("rabbitmq down")
        self.published.append((task, queue))


def _handle(records: list[Any], fleet: Fleet, widths: dict[str, int], publisher: FakePublisher,
            producer: Any, stop: asyncio.Event | None = None) -> tuple[list[bool], TelemetryHandler]:
    settings = TriggerSettings(inference_shards=4, dlq_topic="dlq")

    async def go() -> tuple[list[bool], TelemetryHandler]:
        with ThreadPoolExecutor(1) as executor:
            handler = TelemetryHandler(settings, fleet, widths, publisher, producer, executor,
                                       stop or asyncio.Event())
            return [await handler.handle(r) for r in records], handler

    return asyncio.run(go())


def test_valid_frames_become_tasks_on_their_shard(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(failures=2), fake_producer()
    frames = [frame(index=i) for i in range(3)] + [frame(satellite_id="SAT-003", entity="P-1", index=9)]
    oks, handler = _handle([record(json.dumps(f).encode(), offset=i) for i, f in enumerate(frames)],
                           fleet, widths, publisher, producer)
    assert oks == [True] * 4
    assert publisher.attempts == 6  # two failures retried in place
    assert [(t.stream_id, t.index, q) for t, q in publisher.published] == [
        ("SAT-001/A-1", 0, queue_for("SAT-001/A-1", 4)), ("SAT-001/A-1", 1, queue_for("SAT-001/A-1", 4)),
        ("SAT-001/A-1", 2, queue_for("SAT-001/A-1", 4)), ("SAT-003/P-1", 9, queue_for("SAT-003/P-1", 4)),
    ]
    task = publisher.published[0][0]
    assert task.sensor_values == [float(i) / 10 for i in range(25)]
    assert task.ground_truth_labels == frames[0]["ground_truth_labels"]
    assert producer.sent == []
    assert handler.stats.published == 4


def test_invalid_frames_go_to_the_dlq(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    publisher, producer = FakePublisher(), fake_producer(failures=1)
    raw = json.dumps(frame(satellite_id="SAT-404")).encode()
    oks, handler = _handle([record(raw, topic="telemetry", partition=3, offset=17)], fleet, widths, publisher,
                           producer)
    assert oks == [True]
    assert publisher.published == []
    [(topic, value, key)] = producer.sent
    assert (topic, key) == ("dlq", b"SAT-001/A-1")
    letter = DeadLetter.model_validate_json(value or b"")
    assert letter.reason.startswith("unknown_stream: unknown satellite 'SAT-404'")
    assert (letter.source_topic, letter.partition, letter.offset) == ("telemetry", 3, 17)
    assert letter.raw_payload == raw.decode()
    assert letter.service == "smap-inference-trigger"
    assert handler.stats.dead_lettered == 1


def test_stop_while_the_broker_is_down_leaves_the_record_unhandled(
    frame: Callable[..., dict[str, Any]], record: Callable[..., Any], fleet: Fleet, widths: dict[str, int],
    fake_producer: Callable[..., Any],
) -> None:
    stop = asyncio.Event()
    stop.set()
    oks, _ = _handle([record(json.dumps(frame()).encode())], fleet, widths, FakePublisher(failures=99),
                     fake_producer(), stop)
    assert oks == [False]
