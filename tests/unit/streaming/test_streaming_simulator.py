"""Simulator: frames, keys, index order, start index / max steps / loop, all streams per tick."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest

from smap_shared.data import ChannelData, Interval
from smap_shared.fleet import Fleet, FleetError, load_fleet
from smap_shared.schemas import TelemetryMessage
from smap_shared.settings import SimulatorSettings
from smap_shared.streaming.simulator import frame_indices, run_simulator, select_streams, send_tick


class TinySource:
    """Entity -> rows x 3 test split whose value encodes (entity number, row)."""

    def __init__(self, rows: dict[str, int], labels: dict[str, list[Interval]]) -> None:
        self.rows = rows
        self.labels = labels

    def channels(self) -> list[str]:
        return list(self.rows)

    def load(self, channel: str) -> ChannelData:
        n = self.rows[channel]
        test = np.zeros((n, 3))
        test[:, 0] = np.arange(n) + 0.5
        test[:, 2] = 1.0
        return ChannelData(channel, np.zeros((4, 3)), test, self.labels.get(channel, []))

    def dataset(self, channels: list[str]) -> str:
        return "TINY"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.acked = 0

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        assert value is not None and key is not None
        self.sent.append((topic, value, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.001, self._ack, fut)
        return fut

    def _ack(self, fut: asyncio.Future[Any]) -> None:
        self.acked += 1
        fut.set_result(None)

    def messages(self) -> list[TelemetryMessage]:
        return [TelemetryMessage.model_validate_json(v) for _, v, _ in self.sent]


@pytest.fixture
def two_sat_fleet(tmp_path: Any) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(
        'deployed = ["A-1", "A-2", "P-1"]\n'
        '[[satellites]]\nid = "SAT-001"\nentities = ["A-1", "A-2"]\n'
        '[[satellites]]\nid = "SAT-003"\nentities = ["P-1"]\n'
    )
    return load_fleet(path)


SOURCE = TinySource({"A-1": 5, "A-2": 3, "P-1": 4}, {"A-1": [Interval(1, 2)], "P-1": [Interval(3, 3)]})


def _run(settings: SimulatorSettings, fleet: Fleet, stop: asyncio.Event | None = None) -> FakeProducer:
    producer = FakeProducer()

    async def go() -> None:
        await run_simulator(settings, stop or asyncio.Event(), fleet=fleet, source=SOURCE, producer=producer)

    asyncio.run(go())
    assert producer.acked == len(producer.sent)
    return producer


def _settings(**kw: Any) -> SimulatorSettings:
    return SimulatorSettings(simulator_interval_s=0, telemetry_topic="telemetry", **kw)


def test_frame_indices() -> None:
    assert list(frame_indices(5, 0, None, False)) == [0, 1, 2, 3, 4]
    assert list(frame_indices(5, 3, None, False)) == [3, 4]
    assert list(frame_indices(5, 1, 2, False)) == [1, 2]
    assert list(frame_indices(5, 9, None, False)) == []
    assert list(frame_indices(3, 1, 7, True)) == [1, 2, 0, 1, 2, 0, 1]
    assert list(frame_indices(0, 0, 3, True)) == []


def test_whole_splits_in_order_with_keys_and_labels(two_sat_fleet: Fleet) -> None:
    producer = _run(_settings(), two_sat_fleet)
    msgs = producer.messages()
    assert {t for t, _, _ in producer.sent} == {"telemetry"}
    assert all(k.decode() == m.stream_id for (_, _, k), m in zip(producer.sent, msgs, strict=True))
    by_stream: dict[str, list[int]] = {}
    for m in msgs:
        by_stream.setdefault(m.stream_id, []).append(m.index)
    assert by_stream == {
        "SAT-001/A-1": [0, 1, 2, 3, 4], "SAT-001/A-2": [0, 1, 2], "SAT-003/P-1": [0, 1, 2, 3]
    }
    # all streams advance together: tick k holds index k of every stream still running
    assert [(m.stream_id, m.index) for m in msgs[:6]] == [
        ("SAT-001/A-1", 0), ("SAT-001/A-2", 0), ("SAT-003/P-1", 0),
        ("SAT-001/A-1", 1), ("SAT-001/A-2", 1), ("SAT-003/P-1", 1),
    ]
    a1 = [m for m in msgs if m.entity == "A-1"]
    assert a1[3].sensors == {"sensor_0": 3.5, "sensor_1": 0.0, "sensor_2": 1.0}
    # per-channel labels: every sensor carries the channel's label of the row (inclusive interval 1..2)
    assert [set(m.ground_truth_labels.values()) for m in a1] == [{0}, {1}, {1}, {0}, {0}]
    assert set(a1[1].ground_truth_labels) == {"sensor_0", "sensor_1", "sensor_2"}
    assert [m.ground_truth_labels["sensor_0"] for m in msgs if m.entity == "A-2"] == [0, 0, 0]
    # timestamps are emission times, never decreasing
    stamps = [m.timestamp for m in msgs]
    assert stamps == sorted(stamps)
    assert json.loads(producer.sent[0][1])["timestamp"].endswith("Z")


def test_start_index_max_steps_loop_and_filter(two_sat_fleet: Fleet) -> None:
    msgs = _run(_settings(simulator_start_index=2, simulator_max_steps=4, simulator_loop=True,
                          simulator_entities="A-2, P-1"), two_sat_fleet).messages()
    got: dict[str, list[int]] = {}
    for m in msgs:
        got.setdefault(m.entity, []).append(m.index)
    assert got == {"A-2": [2, 0, 1, 2], "P-1": [2, 3, 0, 1]}
    no_loop = _run(_settings(simulator_start_index=3, simulator_max_steps=10), two_sat_fleet).messages()
    assert [(m.entity, m.index) for m in no_loop] == [("A-1", 3), ("P-1", 3), ("A-1", 4)]


def test_unknown_entity_in_filter(two_sat_fleet: Fleet) -> None:
    with pytest.raises(FleetError, match="D-9"):
        select_streams(two_sat_fleet, "A-1,D-9")


def test_interval_paces_ticks_and_stop_ends_early(two_sat_fleet: Fleet) -> None:
    settings = _settings(simulator_entities="A-1").model_copy(update={"simulator_interval_s": 0.05})
    started = time.monotonic()
    msgs = _run(settings, two_sat_fleet).messages()
    elapsed = time.monotonic() - started
    assert [m.index for m in msgs] == [0, 1, 2, 3, 4]
    assert 0.19 <= elapsed < 2.0  # 4 waits of 50 ms between 5 ticks, none after the last
    looping = settings.model_copy(update={"simulator_loop": True, "simulator_interval_s": 0.01})

    async def stop_soon(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.1)
        stop.set()

    producer = FakeProducer()

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(stop_soon(stop))
        await run_simulator(looping, stop, fleet=two_sat_fleet, source=SOURCE, producer=producer)
        await task

    asyncio.run(asyncio.wait_for(go(), 5))
    assert 3 <= len(producer.sent) <= 15


class FlakyProducer:
    """The ack of key `bad` fails `failures` times; every other frame is acked."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.acked: list[bytes] = []
        self.attempts: list[bytes] = []

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        assert key is not None
        self.attempts.append(key)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key == b"bad" and self.failures > 0:
            self.failures -= 1
            fut.set_exception(ConnectionError("not acked"))
        else:
            self.acked.append(key)
            fut.set_result(None)
        return fut


def test_send_tick_resends_only_the_frames_not_acked() -> None:
    producer = FlakyProducer(failures=2)
    frames = [(b"good", b"1"), (b"bad", b"2"), (b"also-good", b"3")]
    assert asyncio.run(send_tick(producer, "t", frames, asyncio.Event())) is True
    assert producer.attempts == [b"good", b"bad", b"also-good", b"bad", b"bad"]
    assert sorted(producer.acked) == [b"also-good", b"bad", b"good"]  # each acked once

    stopped = asyncio.Event()
    stopped.set()
    assert asyncio.run(send_tick(FlakyProducer(failures=99), "t", frames, stopped)) is False


def test_tick_timestamps_are_whole_distinct_milliseconds() -> None:
    from datetime import timedelta
    from itertools import pairwise

    from smap_shared.streaming.simulator import tick_timestamp

    stamps = [tick_timestamp(None)]
    for _ in range(200):  # far faster than 1 ms per tick
        stamps.append(tick_timestamp(stamps[-1]))
    assert all(b - a >= timedelta(milliseconds=1) for a, b in pairwise(stamps))
    assert all(s.microsecond % 1000 == 0 for s in stamps)


def test_spread_phase_emits_each_satellite_at_its_own_part_of_the_interval(two_sat_fleet: Fleet) -> None:
    interval = 0.2
    spread = _settings(simulator_max_steps=3).model_copy(update={"simulator_interval_s": interval})
    msgs = _run(spread, two_sat_fleet).messages()
    by_sat: dict[str, list[float]] = {}
    for m in msgs:
        by_sat.setdefault(m.satellite_id, []).append(m.timestamp.timestamp())
    # SAT-001 (both entities, one instant per tick) at the start of each tick, SAT-003 half an interval later
    sat1, sat3 = sorted(set(by_sat["SAT-001"])), sorted(set(by_sat["SAT-003"]))
    assert len(sat1) == len(sat3) == 3
    for a, b in zip(sat1, sat3, strict=True):
        assert 0.5 * interval - 0.05 <= b - a <= 0.5 * interval + 0.05
    # every stream still at the interval's cadence, in index order
    assert [m.index for m in msgs if m.entity == "P-1"] == [0, 1, 2]
    assert 2 * interval - 0.05 <= sat3[-1] - sat3[0] <= 2 * interval + 0.1

    together = spread.model_copy(update={"simulator_phase": "together"})
    msgs = _run(together, two_sat_fleet).messages()
    ticks = sorted({m.timestamp for m in msgs})
    assert len(ticks) == 3  # every stream of a tick shares its instant
