"""Stream integrity on the real chain (issue 14, holes 1-3): a 1.2 MB message, a frame with a sensor value of
1e308 and a frame jumping to index 10^9 are dead-lettered with their reasons while the stream goes on; and a
restarted source (a second simulator run over indices the first run already scored, with other history behind
them) is scored as the new run it is, never answered with the first run's outputs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from kafka_io import read_topic

from smap_shared.data import VendoredSource
from smap_shared.infra.chain import running_chain
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer
from smap_shared.schemas import DeadLetter, InferenceResult

pytestmark = pytest.mark.integration

START = 4000
STREAM = "SAT-001/A-1"


async def _produce_large(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait("smap-telemetry", value=value, key=key)
    finally:
        await producer.stop()


def _frame(index: int, values: list[float]) -> bytes:
    return json.dumps({"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-12-01T00:00:00Z",
                       "index": index, "sensors": {f"sensor_{i}": v for i, v in enumerate(values)}}).encode()


def test_bad_frames_are_dead_lettered_and_a_restarted_source_is_a_new_run(
    tmp_path: Path, quick_ckpt_dir: Path, source: VendoredSource
) -> None:
    test = source.load("A-1").test
    scorer = Scorer(Checkpoint.load(quick_ckpt_dir / "A-1.ckpt"))
    with running_chain(quick_ckpt_dir, ["A-1"], tmp_path, redis_db=9) as chain:
        bootstrap = f"localhost:{chain.kafka_port}"
        chain.run_simulator(START, 60)  # run 1: START .. START+59
        first = asyncio.run(read_topic(bootstrap, "smap-inference-results", 60, 120))
        assert len(first) == 60
        huge = b'{"satellite_id": "SAT-001", "entity": "A-1", "pad": "' + b"x" * 1_200_000 + b'"}'
        absurd = [float(v) for v in test[START + 60]]
        absurd[0] = 1e308
        asyncio.run(_produce_large(bootstrap, [
            (STREAM.encode(), huge),
            (STREAM.encode(), _frame(START + 60, absurd)),
            (STREAM.encode(), _frame(10**9, [float(v) for v in test[START + 60]])),
        ]))
        chain.run_simulator(START + 30, 30)  # run 2 (a restarted source): START+30 .. START+59 again
        raw = asyncio.run(read_topic(bootstrap, "smap-inference-results", 90, 180))
        assert len(raw) >= 90, "the stream stopped after the bad messages"
        second = [InferenceResult.model_validate_json(r) for r in raw[60:]]
        assert [r.index for r in second] == list(range(START + 30, START + 60))
        ref = scorer.run(test[START + 30 : START + 60])  # the new run scored from its own start
        for i, r in enumerate(second):
            assert not r.duplicate, f"index {r.index} answered from the previous run"
            assert abs(r.anomaly_score - ref.anomaly_score[i]) <= 1e-6, r.index
            np.testing.assert_allclose([r.sensor_error[f"sensor_{j}"] for j in range(25)], ref.sensor_error[i],
                                       atol=1e-6, rtol=0)
        letters = [DeadLetter.model_validate_json(m) for m in asyncio.run(
            read_topic(bootstrap, "smap-telemetry-dlq", 3, 60))]
        reasons = sorted(d.reason.split(":")[0] for d in letters)
        assert reasons == ["implausible", "model_refused", "too_large"], [d.reason for d in letters]
        big = next(d for d in letters if d.reason.startswith("too_large"))
        assert big.payload_size == len(huge) and big.payload_truncated and len(big.raw_payload) <= 64 * 1024
        jump = next(d for d in letters if d.reason.startswith("model_refused"))
        assert "implausible" in jump.reason and "1000000000" in jump.reason
