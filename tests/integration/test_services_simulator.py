"""Simulator against the real Kafka API (Tansu on localhost:9092): frames arrive keyed by stream, each
stream in one partition and in index order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from smap_shared.data import default_source
from smap_shared.schemas import TelemetryMessage
from smap_shared.settings import SimulatorSettings
from smap_shared.streaming.simulator import run_simulator

pytestmark = pytest.mark.integration

BOOTSTRAP = "localhost:9092"


def test_simulator_replays_the_test_splits_to_kafka() -> None:
    topic = f"it-sim-{uuid.uuid4().hex[:8]}"
    settings = SimulatorSettings(
        kafka_bootstrap_servers=BOOTSTRAP, telemetry_topic=topic, simulator_interval_s=0,
        simulator_start_index=4688, simulator_max_steps=5, simulator_entities="A-1,P-1,G-1",
    )

    async def scenario() -> list[tuple[int, str, TelemetryMessage]]:
        stats = await run_simulator(settings, asyncio.Event())
        assert (stats.ticks, stats.frames) == (5, 15)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=None,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=20)
        await consumer.start()
        got: list[tuple[int, str, TelemetryMessage]] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while len(got) < 15 and loop.time() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    got.extend((tp.partition, r.key.decode(), TelemetryMessage.model_validate_json(r.value))
                               for r in records)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(got) == 15
    source = default_source()
    for stream in ("SAT-001/A-1", "SAT-003/P-1", "SAT-003/G-1"):
        frames = [(p, m) for p, k, m in got if k == stream]
        assert all(m.stream_id == stream for _, m in frames)
        assert len({p for p, _ in frames}) == 1  # keyed: one partition per stream
        assert [m.index for _, m in frames] == list(range(4688, 4693))
        data = source.load(stream.split("/")[1])
        mask = data.test_mask()
        for _, m in frames:
            assert m.sensor_vector() == [float(x) for x in data.test[m.index]]
            assert set(m.ground_truth_labels.values()) == {int(mask[m.index])}
    # A-1's anomaly starts at row 4690 (inclusive interval 4690..4774)
    a1 = [m for _, k, m in got if k == "SAT-001/A-1"]
    assert [m.ground_truth_labels["sensor_0"] for m in a1] == [0, 0, 1, 1, 1]
