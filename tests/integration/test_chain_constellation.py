"""The micro-batched chain on the real broker, RabbitMQ, Redis, Triton and VictoriaMetrics.

- A constellation: 10 identical satellites x the 20 deployed entities (200 streams), 100 steps each at full
  speed: every (stream, index) has exactly one result, every score equals the offline model on the same
  sequence, VictoriaMetrics holds one sample per series and timestamp, and the frames travelled in
  micro-batches (far fewer Celery tasks than frames).
(Triton SIGKILLed and kept down 30 s, VictoriaMetrics stopped 30 s and the other faults: test_fault_suite.py.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from kafka_io import read_topic

from smap_shared.data import VendoredSource
from smap_shared.fleet import default_fleet, stream_id
from smap_shared.infra.chain import Chain, running_chain, write_fleet
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer, SequenceOutput
from smap_shared.model.train import TrainConfig, train_entity
from smap_shared.schemas import InferenceResult

pytestmark = pytest.mark.integration

DEPLOYED = list(default_fleet().deployed)


@pytest.fixture(scope="module")
def deployed_ckpts(tmp_path_factory: pytest.TempPathFactory, quick_ckpt_dir: Path, source: VendoredSource) -> Path:
    """Checkpoints of all 20 deployed entities (the session's quick ones, plus the rest trained briefly)."""
    out = tmp_path_factory.mktemp("deployed-ckpt")
    for entity in DEPLOYED:
        have = quick_ckpt_dir / f"{entity}.ckpt"
        if have.exists():
            shutil.copyfile(have, out / have.name)
        else:
            train_entity(source.load(entity), TrainConfig(epochs=2)).save(out / f"{entity}.ckpt")
    return out


def _offline(ckpts: Path, source: VendoredSource, entity: str, start: int, steps: int) -> SequenceOutput:
    return Scorer(Checkpoint.load(ckpts / f"{entity}.ckpt")).run(source.load(entity).test[start : start + steps])


def _results(chain: Chain, want: int, timeout_s: float) -> list[InferenceResult]:
    def key(raw: bytes) -> tuple[str, int]:
        r = json.loads(raw)
        return (r["stream_id"], r["index"])

    raw = asyncio.run(read_topic(f"localhost:{chain.kafka_port}", "smap-inference-results", want, timeout_s,
                                 distinct=key))
    return [InferenceResult.model_validate_json(r) for r in raw]


def _check_exact(results: list[InferenceResult], refs: dict[str, SequenceOutput], start: int) -> None:
    for r in results:
        ref = refs[r.entity]
        i = r.index - start
        assert abs(r.anomaly_score - ref.anomaly_score[i]) <= 1e-6, (r.stream_id, r.index)
        np.testing.assert_allclose([r.sensor_error[f"sensor_{j}"] for j in range(len(r.sensor_error))],
                                   ref.sensor_error[i], atol=1e-6, rtol=0)
        assert r.anomaly_detected == bool(ref.anomaly_detected[i]), (r.stream_id, r.index)
        assert r.detector_signal == pytest.approx(ref.detector_signal[i], abs=1e-9)
        assert r.alarm_cause == int(ref.alarm_cause[i])


def _check_vm(chain: Chain, streams: list[tuple[str, str]], steps: int) -> None:
    seen = [0]

    def all_in() -> bool:
        seen[0] = sum(len(s["values"]) for s in chain.vm_export("smap_anomaly_score"))
        return seen[0] >= len(streams) * steps

    try:
        chain.wait_for(all_in, 240, "VictoriaMetrics to hold every anomaly score")
    except TimeoutError as exc:
        raise AssertionError(f"VictoriaMetrics holds {seen[0]} of {len(streams) * steps} scores") from exc
    for name in ("smap_anomaly_score", "smap_detector_signal"):
        series = chain.vm_export(name)
        got = {(s["metric"]["satellite_id"], s["metric"]["entity"]): s["timestamps"]
               for s in series}
        assert len(series) == len(got) == len(streams), name
        assert set(got) == set(streams)
        for stream, stamps in got.items():
            assert isinstance(stamps, list)
            assert len(stamps) == len(set(stamps)) == steps, (name, stream, len(stamps))


def test_constellation_of_200_streams_in_micro_batches(
    tmp_path: Path, deployed_ckpts: Path, source: VendoredSource
) -> None:
    start, steps, satellites = 1000, 100, 10
    fleet_file = write_fleet(tmp_path / "fleet.toml", satellites, DEPLOYED)
    streams = [(f"SAT-{k:03d}", e) for k in range(1, satellites + 1) for e in DEPLOYED]
    refs = {e: _offline(deployed_ckpts, source, e, start, steps) for e in DEPLOYED}
    with running_chain(deployed_ckpts, DEPLOYED, tmp_path / "chain", redis_db=11, fleet_file=fleet_file) as chain:
        chain.run_simulator(start, steps, timeout=600)
        total = len(streams) * steps
        results = _results(chain, total, 600)
        by_key: dict[tuple[str, int], list[InferenceResult]] = defaultdict(list)
        for r in results:
            by_key[(r.stream_id, r.index)].append(r)
        expected = {(stream_id(s, e), start + i) for s, e in streams for i in range(steps)}
        assert set(by_key) == expected, f"missing {len(expected - set(by_key))} (stream, index) pairs"
        dupes = [k for k, v in by_key.items() if len(v) != 1]
        assert not dupes, f"{len(dupes)} (stream, index) pairs have more than one result, e.g. {dupes[:3]}"
        assert not any(r.duplicate or r.gap for r in results)
        _check_exact(results, refs, start)
        _check_vm(chain, streams, steps)
        # micro-batches: the trigger published far fewer tasks than frames
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:15672/api/queues/{urllib.parse.quote(chain.vhost, safe='')}",
                headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="}), timeout=10) as resp:
            queues = json.loads(resp.read())
        published = sum(q.get("message_stats", {}).get("publish", 0) for q in queues)
        assert 0 < published <= total / 8, f"{published} tasks for {total} frames"
