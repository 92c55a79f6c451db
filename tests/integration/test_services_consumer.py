"""VictoriaMetrics consumer against the real services: a private Tansu broker (Kafka API) and a private,
empty VictoriaMetrics with the chain's flags.

Results must come back from VictoriaMetrics with their exact values and frame timestamps; offsets are
committed only after VictoriaMetrics accepted the lines (the consumer's `VictoriaSink` under the shared
consume -> flush -> commit loop), also across an outage, during which it retries with backoff and commits
nothing.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from alert_harness import tansu
from kafka_io import committed_and_end, produce

from smap_shared.operations.harness import Victoria
from smap_shared.schemas import DeadLetter, InferenceResult
from smap_shared.settings import ConsumerSettings
from smap_shared.streaming.consumer import IMPORT_PATH, VictoriaImporter, results_dlq_topic, run_consumer
from smap_shared.streaming.metrics import consumer_metrics

pytestmark = pytest.mark.integration

# recent: VictoriaMetrics drops samples older than its retention period (1 month by default).
# Values below have few significant digits: VictoriaMetrics keeps about 12 (10.333333333333334 comes back
# as 10.333333333333), so these compare exactly.
T0 = datetime.now(UTC).replace(microsecond=678000) - timedelta(minutes=10)


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tansu(tmp_path_factory.mktemp("tansu")) as url:
        yield url


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    victoria = Victoria(tmp_path_factory.mktemp("vm")).start()
    try:
        yield victoria.url
    finally:
        victoria.stop()


def _result(sat: str, index: int) -> InferenceResult:
    return InferenceResult(
        stream_id=f"{sat}/A-1", satellite_id=sat, entity="A-1", model_name="smap_A-1",
        timestamp=T0 + timedelta(seconds=30 * index), index=index,
        sensor_values={"sensor_0": 0.1 * index, "sensor_1": 1.0},
        reconstruction={"sensor_0": 0.123456789 + index, "sensor_1": 0.5},
        sensor_error={"sensor_0": 1e-07 * (index + 1), "sensor_1": 0.25},
        anomaly_score=10.0 + index * 0.125, anomaly_detected=index == 2, threshold=10.5, inference_time_ms=2.75,
        alarm_cause=8 if index == 2 else 0,
        ground_truth_labels={"sensor_0": int(index >= 1), "sensor_1": int(index >= 1)},
    )


def _settings(run: str, bootstrap: str, vm: str, **kw: Any) -> ConsumerSettings:
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap, "results_topic": f"it-results-{run}",
        "consumer_group_id": f"it-vm-{run}", "victoria_url": vm, "consumer_batch_max": 2,
        "consumer_flush_interval_s": 0.1,
    }
    return ConsumerSettings(**{**fields, **kw})


def _export(vm: str, sat: str) -> dict[tuple[str, str], tuple[list[float], list[int]]]:
    """(metric name, sensor or cause) -> (values, timestamps ms) of every series of satellite `sat`."""
    urllib.request.urlopen(f"{vm}/internal/force_flush", timeout=5).read()
    query = urllib.parse.urlencode({"match[]": f'{{satellite_id="{sat}"}}'})
    with urllib.request.urlopen(f"{vm}/api/v1/export?{query}", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        series = json.loads(line)
        metric = series["metric"]
        assert (metric["satellite_id"], metric["entity"]) == (sat, "A-1")
        pairs = sorted(zip(series["timestamps"], series["values"], strict=True))
        key = metric.get("sensor", metric.get("cause", ""))
        out[(metric["__name__"], key)] = ([v for _, v in pairs], [t for t, _ in pairs])
    return out


async def _wait_for_samples(vm: str, sat: str, samples: int, timeout_s: float) -> dict[Any, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        series = await asyncio.to_thread(_export, vm, sat)
        if sum(len(v) for v, _ in series.values()) >= samples or loop.time() > deadline:
            return series
        await asyncio.sleep(0.2)


SERIES_PER_RESULT = 5 + 4 + 4 * 2  # 5 stream metrics, 4 alarm causes, 4 per-sensor metrics x 2 sensors


def test_consumer_writes_exact_values_and_dead_letters_invalid_results(bootstrap: str, vm: str) -> None:
    run = uuid.uuid4().hex[:8]
    sat = f"IT-{run}"
    settings = _settings(run, bootstrap, vm)
    results = [_result(sat, i) for i in range(3)]
    values = [(r.stream_id.encode(), r.model_dump_json().encode()) for r in results]
    values.insert(1, (f"{sat}/A-1".encode(), b'{"stream_id": "broken"'))

    async def scenario() -> None:
        await produce(bootstrap, settings.results_topic, values)
        stop = asyncio.Event()
        consumer = asyncio.create_task(run_consumer(settings, stop))
        series = await _wait_for_samples(vm, sat, 3 * SERIES_PER_RESULT, timeout_s=20)
        stop.set()
        stats = await asyncio.wait_for(consumer, 15)
        assert (stats.results, stats.dead_lettered, stats.lines_written) == (3, 1, 3 * SERIES_PER_RESULT)

        ts = [int(T0.timestamp()) * 1000 + 678 + 30_000 * i for i in range(3)]
        assert series[("smap_anomaly_score", "")] == ([10.0, 10.125, 10.25], ts)
        assert series[("smap_anomaly_detected", "")] == ([0, 0, 1], ts)
        assert series[("smap_anomaly_threshold", "")] == ([10.5] * 3, ts)
        assert series[("smap_inference_time_ms", "")] == ([2.75] * 3, ts)
        assert series[("smap_ground_truth_anomaly", "")] == ([0, 1, 1], ts)
        assert series[("smap_sensor_value", "sensor_0")] == ([0.0, 0.1, 0.2], ts)
        assert series[("smap_sensor_reconstruction", "sensor_0")] == ([0.123456789, 1.123456789, 2.123456789], ts)
        assert series[("smap_sensor_error", "sensor_0")] == ([1e-07, 2e-07, 3e-07], ts)
        assert series[("smap_sensor_ground_truth", "sensor_1")] == ([0, 1, 1], ts)
        assert series[("smap_alarm_cause", "value_quiet")] == ([0, 0, 1], ts)
        assert series[("smap_alarm_cause", "value_step")] == ([0, 0, 0], ts)
        assert len(series) == SERIES_PER_RESULT

        committed, end = await committed_and_end(bootstrap, settings.results_topic, settings.consumer_group_id)
        assert sum(end.values()) == 4
        assert {p: committed[p] or 0 for p in end} == end

        dlq = AIOKafkaConsumer(results_dlq_topic(settings), bootstrap_servers=bootstrap, group_id=None,
                               auto_offset_reset="earliest", fetch_max_wait_ms=20)
        await dlq.start()
        try:
            batch = await dlq.getmany(timeout_ms=5000)
        finally:
            await dlq.stop()
        [letter] = [DeadLetter.model_validate_json(r.value) for rs in batch.values() for r in rs]
        assert letter.reason.startswith("invalid_json: ")
        assert (letter.raw_payload, letter.service) == ('{"stream_id": "broken"', "smap-victoria-consumer")

    asyncio.run(asyncio.wait_for(scenario(), 45))


def test_consumer_keeps_the_batch_uncommitted_while_victoriametrics_is_down(bootstrap: str, vm: str) -> None:
    run = uuid.uuid4().hex[:8]
    sat = f"IT-{run}"
    settings = _settings(run, bootstrap, vm, consumer_batch_max=10)
    results = [_result(sat, i) for i in range(5)]
    records = [(r.stream_id.encode(), r.model_dump_json().encode()) for r in results]
    failures = consumer_metrics().import_failures
    taken = consumer_metrics().messages.labels("valid")

    async def wait_failures(count: float, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while failures._value.get() < count and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert failures._value.get() >= count  # retried with backoff

    async def scenario() -> None:
        await produce(bootstrap, settings.results_topic, records[:2])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            importer = VictoriaImporter("http://127.0.0.1:1", session)  # nothing listens there
            before, taken_before = failures._value.get(), taken._value.get()
            stop = asyncio.Event()
            consumer = asyncio.create_task(run_consumer(settings, stop, importer=importer))
            await wait_failures(before + 3, timeout_s=20)
            # backpressure: what arrives meanwhile is not consumed while the batch is stuck
            await produce(bootstrap, settings.results_topic, records[2:])
            await wait_failures(before + 5, timeout_s=20)
            assert taken._value.get() - taken_before == 2
            committed, _ = await committed_and_end(bootstrap, settings.results_topic, settings.consumer_group_id)
            assert not any(committed.values())
            assert await asyncio.to_thread(_export, vm, sat) == {}
            assert not consumer.done()

            importer.url = vm + IMPORT_PATH  # VictoriaMetrics is back: the same batch goes through, then the rest
            series = await _wait_for_samples(vm, sat, 5 * SERIES_PER_RESULT, timeout_s=20)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while loop.time() < deadline:
                committed, end = await committed_and_end(bootstrap, settings.results_topic,
                                                         settings.consumer_group_id)
                if {p: committed[p] or 0 for p in end} == end:
                    break
                await asyncio.sleep(0.2)
            stop.set()
            stats = await asyncio.wait_for(consumer, 15)
        assert (stats.results, stats.lines_written) == (5, 5 * SERIES_PER_RESULT)
        assert series[("smap_anomaly_score", "")][0] == [10.0 + i * 0.125 for i in range(5)]
        committed, end = await committed_and_end(bootstrap, settings.results_topic, settings.consumer_group_id)
        assert sum(end.values()) == 5
        assert {p: committed[p] or 0 for p in end} == end

    asyncio.run(asyncio.wait_for(scenario(), 60))
