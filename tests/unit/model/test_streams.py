from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer
from smap_shared.model.streams import (
    RefusedRowError,
    StreamRegistry,
    StreamState,
    StreamUpdate,
    decode_output,
    encode_output,
)

Array = npt.NDArray[np.float64]


class MemoryStore:
    """In-memory StateStore that can be told to fail (the Redis-backed one is tested for real)."""

    def __init__(self) -> None:
        self.saved: dict[str, StreamState] = {}
        self.fail = False

    def load_all(self) -> dict[str, StreamState]:
        return dict(self.saved)

    def save_many(self, updates: list[StreamUpdate]) -> None:
        if self.fail:
            raise ConnectionError("store down")
        for u in updates:
            self.saved[u.stream_id] = u.state


@pytest.fixture
def seq(source: VendoredSource) -> Array:
    return source.load("A-1").test[:40]


def test_interleaved_streams_equal_offline_runs(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    ref = Scorer(a1_ckpt).run(seq).anomaly_score
    got: dict[str, list[float]] = {"a": [], "b": []}
    for i, row in enumerate(seq):
        for sid in ("a", "b"):
            got[sid].append(reg.step(row, sid, i).output.anomaly_score)
    np.testing.assert_allclose(got["a"], ref, atol=1e-12)
    np.testing.assert_allclose(got["b"], ref, atol=1e-12)


def test_redelivery_replays_outputs_and_keeps_state(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    first = [reg.step(row, "s", i) for i, row in enumerate(seq[:10])]
    hidden = reg.streams["s"].hidden.copy()
    again = reg.step(seq[3], "s", 3)
    assert again.duplicate and again.output == first[3].output
    np.testing.assert_array_equal(reg.streams["s"].hidden, hidden)
    # the same index with other values is not a redelivery: refused, and the state is untouched
    with pytest.raises(RefusedRowError, match="already applied with other values"):
        reg.step(seq[3] * 0, "s", 3)
    np.testing.assert_array_equal(reg.streams["s"].hidden, hidden)


def test_gap_is_applied_and_counted(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    reg.step(seq[0], "s", 0)
    res = reg.step(seq[5], "s", 5)
    assert res.gap == 4 and not res.duplicate
    assert reg.streams["s"].gaps == 4 and reg.streams["s"].last_index == 5


def test_history_is_bounded_and_an_old_index_restarts_the_stream(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt), history=5)
    for i, row in enumerate(seq[:20]):
        reg.step(row, "s", i)
    assert list(reg.streams["s"].history) == [15, 16, 17, 18, 19]
    # index 2 again, long after: the source started over (a replay's new lap): fresh state, applied
    res = [reg.step(row, "s", 2 + i) for i, row in enumerate(seq[2:12])]
    assert not any(r.duplicate for r in res) and reg.streams["s"].resets == 1
    fresh = Scorer(a1_ckpt).run(seq[2:12]).anomaly_score
    np.testing.assert_allclose([r.output.anomaly_score for r in res], fresh, atol=1e-12)


def test_store_failure_changes_nothing(a1_ckpt: Checkpoint, seq: Array) -> None:
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    ok = reg.step(seq[0], "s", 0)
    store.fail = True
    with pytest.raises(ConnectionError):
        reg.step(seq[1], "s", 1)
    assert reg.streams["s"].last_index == 0
    store.fail = False
    retried = reg.step(seq[1], "s", 1)
    ref = Scorer(a1_ckpt).run(seq[:2]).anomaly_score
    assert [ok.output.anomaly_score, retried.output.anomaly_score] == pytest.approx(ref.tolist(), abs=1e-12)


def test_restore_from_store_resumes_exactly(a1_ckpt: Checkpoint, seq: Array) -> None:
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    for i, row in enumerate(seq[:20]):
        reg.step(row, "s", i)
    restarted = StreamRegistry(Scorer(a1_ckpt), store)
    tail = [restarted.step(row, "s", 20 + i).output.anomaly_score for i, row in enumerate(seq[20:])]
    np.testing.assert_allclose(tail, Scorer(a1_ckpt).run(seq).anomaly_score[20:], atol=1e-12)


def test_a_state_of_another_model_version_starts_over(a1_ckpt: Checkpoint, seq: Array) -> None:
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    for i, row in enumerate(seq[:5]):
        reg.step(row, "s", i)
    old = store.saved["s"]
    store.saved["s"] = StreamState(hidden=old.hidden[:-2], last_index=old.last_index, steps=old.steps)
    restarted = StreamRegistry(Scorer(a1_ckpt), store)
    assert "s" not in restarted.streams
    # the stream starts from the initial state: its next frames score as a fresh run
    fresh = [restarted.step(row, "s", 5 + i).output.anomaly_score for i, row in enumerate(seq[5:10])]
    np.testing.assert_allclose(fresh, Scorer(a1_ckpt).run(seq[5:10]).anomaly_score, atol=1e-12)


def test_no_stream_id_means_one_default_stream(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    scores = [reg.step(row).output.anomaly_score for row in seq[:5]]
    np.testing.assert_allclose(scores, Scorer(a1_ckpt).run(seq[:5]).anomaly_score, atol=1e-12)


def test_output_codec_roundtrip(a1_ckpt: Checkpoint, seq: Array) -> None:
    s = Scorer(a1_ckpt)
    out, _ = s.step(seq[0], s.initial_state())
    out = replace(out, input_digest="0123abcd", alarm_cause=5)
    i, back = decode_output(encode_output(7, out))
    assert i == 7
    np.testing.assert_array_equal(back.reconstruction, out.reconstruction)
    np.testing.assert_array_equal(back.sensor_error, out.sensor_error)
    assert back == replace(out, reconstruction=back.reconstruction, sensor_error=back.sensor_error)
    # an entry written as JSON by an earlier version still decodes
    old = json.dumps({"i": 3, "r": [0.5], "e": [0.25], "s": 0.1, "d": True, "t": 0.2, "g": 0.3, "c": 1})
    j, legacy = decode_output(old.encode())
    assert j == 3 and legacy.anomaly_detected and legacy.input_digest == "" and legacy.alarm_cause == 1


def test_one_request_of_many_streams_equals_offline_runs(a1_ckpt: Checkpoint, seq: Array) -> None:
    """K rows of several streams in one request, interleaved and of different lengths: each stream's rows are
    applied in their order (waves across streams), and every output equals the offline run of its stream."""
    reg = StreamRegistry(Scorer(a1_ckpt), MemoryStore())
    ref = Scorer(a1_ckpt).run(seq)
    rows, sids, idx = [], [], []
    lengths = {"a": 40, "b": 25, "c": 7}
    cursor = dict.fromkeys(lengths, 0)
    rng = np.random.default_rng(3)
    while any(cursor[s] < n for s, n in lengths.items()):
        s = str(rng.choice([k for k, n in lengths.items() if cursor[k] < n]))
        rows.append(seq[cursor[s]])
        sids.append(s)
        idx.append(cursor[s])
        cursor[s] += 1
    half = len(rows) // 2  # two requests: the second continues every stream where the first stopped
    out = reg.step_many(np.array(rows[:half]), sids[:half], idx[:half])
    out += reg.step_many(np.array(rows[half:]), sids[half:], idx[half:])
    assert len(out) == len(rows)
    for r, s, i in zip(out, sids, idx, strict=True):
        assert not r.duplicate and r.gap == 0
        assert abs(r.output.anomaly_score - ref.anomaly_score[i]) <= 1e-12, (s, i)
        np.testing.assert_allclose(r.output.reconstruction, ref.reconstruction[i], atol=1e-12, rtol=0)
        assert r.output.anomaly_detected == bool(ref.anomaly_detected[i])
        assert r.output.detector_signal == pytest.approx(ref.detector_signal[i], abs=1e-12)
    # a redelivered request answers with the same outputs and changes no state
    hidden = {s: reg.streams[s].hidden.copy() for s in lengths}
    again = reg.step_many(np.array(rows[half:]), sids[half:], idx[half:])
    assert all(a.duplicate and a.output == b.output for a, b in zip(again, out[half:], strict=True))
    for s in lengths:
        np.testing.assert_array_equal(reg.streams[s].hidden, hidden[s])


def test_failed_store_write_leaves_the_whole_request_unapplied(a1_ckpt: Checkpoint, seq: Array) -> None:
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    reg.step_many(seq[:3], ["a", "a", "b"], [0, 1, 0])
    before = {s: (st.last_index, st.hidden.copy()) for s, st in reg.streams.items()}
    store.fail = True
    with pytest.raises(ConnectionError):
        reg.step_many(seq[3:6], ["a", "b", "b"], [2, 1, 2])
    for s, (last, hidden) in before.items():
        assert reg.streams[s].last_index == last
        np.testing.assert_array_equal(reg.streams[s].hidden, hidden)
    store.fail = False
    retried = reg.step_many(seq[3:6], ["a", "b", "b"], [2, 1, 2])
    assert not any(r.duplicate for r in retried)
    assert reg.streams["a"].last_index == 2 and reg.streams["b"].last_index == 2


def test_rows_and_ids_must_agree(a1_ckpt: Checkpoint, seq: Array) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    with pytest.raises(ValueError, match="same number of rows"):
        reg.step_many(seq[:3], ["a", "b"], [0, 0, 1])


def test_a_new_run_starts_the_stream_over_and_never_answers_from_the_old_one(
    a1_ckpt: Checkpoint, seq: Array
) -> None:
    """Issue 14, hole 2: the source restarts (a new run, indices from 0 again) while the model still holds the
    old run's history: every frame of the new run is scored from the initial state, as offline, never
    answered with the old run's outputs; a redelivered start of the run in force is a redelivery."""
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    ref = Scorer(a1_ckpt).run(seq[:30])
    for i in range(40):  # run 1 over other data (its history holds indices 0..39)
        reg.step(seq[-1 - i], "s", i, run_id="run-1", start=i == 0)
    new = [reg.step(seq[i], "s", i, run_id="run-2", start=i == 0) for i in range(30)]
    assert not any(r.duplicate for r in new)
    np.testing.assert_allclose([r.output.anomaly_score for r in new], ref.anomaly_score, atol=1e-12, rtol=0)
    assert reg.streams["s"].run_id == "run-2" and reg.streams["s"].past_runs == ("run-1",)
    again = reg.step(seq[0], "s", 0, run_id="run-2", start=True)  # the start, redelivered
    assert again.duplicate and again.output == new[0].output
    assert reg.streams["s"].last_index == 29
    with pytest.raises(RefusedRowError, match="belongs to run run-1"):  # a late frame of the old run
        reg.step(seq[5], "s", 41, run_id="run-1")
    # a run id never seen, without a start mark, also starts the stream over (a new source)
    fresh = reg.step(seq[0], "s", 7, run_id="run-3")
    assert not fresh.duplicate and abs(fresh.output.anomaly_score - ref.anomaly_score[0]) <= 1e-12
    # the stored state carries the run, so a restarted model knows it too
    assert store.saved["s"].run_id == "run-3"


def test_an_implausible_jump_forward_is_refused(a1_ckpt: Checkpoint, seq: Array) -> None:
    """Issue 14, hole 3: index 10^9 after 0..4 is refused and never reaches the state; a plausible gap is
    applied and counted."""
    reg = StreamRegistry(Scorer(a1_ckpt), max_jump=1000)
    for i in range(5):
        reg.step(seq[i], "s", i)
    hidden = reg.streams["s"].hidden.copy()
    with pytest.raises(RefusedRowError, match="implausible"):
        reg.step(seq[5], "s", 10**9)
    np.testing.assert_array_equal(reg.streams["s"].hidden, hidden)
    assert reg.step(seq[5], "s", 500).gap == 495


def test_state_codec_roundtrip(a1_ckpt: Checkpoint, seq: Array) -> None:
    from smap_shared.model.streams import RedisStateStore

    reg = StreamRegistry(Scorer(a1_ckpt))
    for i in range(3):
        reg.step(seq[i], "s", i, run_id="r1", start=i == 0)
    st = reg.streams["s"]
    back = RedisStateStore.decode_state(RedisStateStore.encode_state(st), st.history)
    np.testing.assert_array_equal(back.hidden, st.hidden)
    assert (back.last_index, back.steps, back.gaps, back.resets, back.run_id, back.past_runs) == (
        st.last_index, st.steps, st.gaps, st.resets, st.run_id, st.past_runs)
