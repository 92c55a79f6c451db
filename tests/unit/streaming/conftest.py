"""Fixtures of the streaming unit tests: in-memory fakes of Kafka records and producers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from smap_shared.fleet import Fleet, default_fleet
from smap_shared.schemas import sensor_keys

WIDTH = 25  # every SMAP channel: 1 telemetry value + 24 command flags


@pytest.fixture
def fleet() -> Fleet:
    return default_fleet()


@pytest.fixture
def widths(fleet: Fleet) -> dict[str, int]:
    return dict.fromkeys(fleet.fleet_entities(), WIDTH)


@pytest.fixture
def frame() -> Callable[..., dict[str, Any]]:
    """A valid telemetry frame as a dict; keyword arguments override fields."""

    def make(**overrides: Any) -> dict[str, Any]:
        keys = sensor_keys(WIDTH)
        msg: dict[str, Any] = {
            "satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-11-28T09:00:00.123Z", "index": 7,
            "sensors": {k: float(i) / 10 for i, k in enumerate(keys)},
            "ground_truth_labels": dict.fromkeys(keys, 0),
        }
        msg.update(overrides)
        return msg

    return make


def make_record(value: bytes | None, *, topic: str = "t", partition: int = 0, offset: int = 0,
                key: bytes | None = b"SAT-001/A-1") -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, 0, 0, ())


@pytest.fixture
def record() -> Callable[..., ConsumerRecord]:
    return make_record


class FakeProducer:
    """send_and_wait that fails `failures` times first, then records what it was given."""

    def __init__(self, failures: int = 0, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("broker down")
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.calls = 0

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.exc
        self.sent.append((topic, value, key))

    def sent_json(self) -> list[dict[str, Any]]:
        return [json.loads(v or b"") for _, v, _ in self.sent]


@pytest.fixture
def fake_producer() -> Callable[..., FakeProducer]:
    return FakeProducer
