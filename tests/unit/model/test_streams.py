from __future__ import annotations

import numpy as np
import pytest

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer, StepOutput
from smap_shared.model.streams import (
    StreamRegistry,
    StreamState,
    decode_output,
    encode_output,
)


class MemoryStore:
    """In-memory StateStore that can be told to fail (the Redis-backed one is tested for real)."""

    def __init__(self) -> None:
        self.saved: dict[str, StreamState] = {}
        self.fail = False

    def load_all(self) -> dict[str, StreamState]:
        return dict(self.saved)

    def save(self, stream_id: str, state: StreamState, index: int | None, output: StepOutput) -> None:
        if self.fail:
            raise ConnectionError("store down")
        self.saved[stream_id] = state


@pytest.fixture
def seq(source: VendoredSource) -> np.ndarray:
    return source.load("A-1").test[:40]


def test_interleaved_streams_equal_offline_runs(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    ref = Scorer(a1_ckpt).run(seq).anomaly_score
    got: dict[str, list[float]] = {"a": [], "b": []}
    for i, row in enumerate(seq):
        for sid in ("a", "b"):
            got[sid].append(reg.step(row, sid, i).output.anomaly_score)
    np.testing.assert_allclose(got["a"], ref, atol=1e-12)
    np.testing.assert_allclose(got["b"], ref, atol=1e-12)


def test_redelivery_replays_outputs_and_keeps_state(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    first = [reg.step(row, "s", i) for i, row in enumerate(seq[:10])]
    hidden = reg.streams["s"].hidden.copy()
    again = reg.step(seq[3], "s", 3)
    assert again.duplicate and again.output == first[3].output
    np.testing.assert_array_equal(reg.streams["s"].hidden, hidden)
    # a redelivery with different (corrupted) values still replays the first outputs
    assert reg.step(seq[3] * 0, "s", 3).output == first[3].output


def test_gap_is_applied_and_counted(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    reg.step(seq[0], "s", 0)
    res = reg.step(seq[5], "s", 5)
    assert res.gap == 4 and not res.duplicate
    assert reg.streams["s"].gaps == 4 and reg.streams["s"].last_index == 5


def test_history_is_bounded_and_an_old_index_restarts_the_stream(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt), history=5)
    for i, row in enumerate(seq[:20]):
        reg.step(row, "s", i)
    assert list(reg.streams["s"].history) == [15, 16, 17, 18, 19]
    # index 2 again, long after: the source started over (a replay's new lap): fresh state, applied
    res = [reg.step(row, "s", 2 + i) for i, row in enumerate(seq[2:12])]
    assert not any(r.duplicate for r in res) and reg.streams["s"].resets == 1
    fresh = Scorer(a1_ckpt).run(seq[2:12]).anomaly_score
    np.testing.assert_allclose([r.output.anomaly_score for r in res], fresh, atol=1e-12)


def test_store_failure_changes_nothing(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
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


def test_restore_from_store_resumes_exactly(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    store = MemoryStore()
    reg = StreamRegistry(Scorer(a1_ckpt), store)
    for i, row in enumerate(seq[:20]):
        reg.step(row, "s", i)
    restarted = StreamRegistry(Scorer(a1_ckpt), store)
    tail = [restarted.step(row, "s", 20 + i).output.anomaly_score for i, row in enumerate(seq[20:])]
    np.testing.assert_allclose(tail, Scorer(a1_ckpt).run(seq).anomaly_score[20:], atol=1e-12)


def test_a_state_of_another_model_version_starts_over(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
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


def test_no_stream_id_means_one_default_stream(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    reg = StreamRegistry(Scorer(a1_ckpt))
    scores = [reg.step(row).output.anomaly_score for row in seq[:5]]
    np.testing.assert_allclose(scores, Scorer(a1_ckpt).run(seq[:5]).anomaly_score, atol=1e-12)


def test_output_codec_roundtrip(a1_ckpt: Checkpoint, seq: np.ndarray) -> None:
    s = Scorer(a1_ckpt)
    out, _ = s.step(seq[0], s.initial_state())
    i, back = decode_output(encode_output(7, out))
    assert i == 7
    np.testing.assert_array_equal(back.reconstruction, out.reconstruction)
    assert back.anomaly_score == out.anomaly_score and back.anomaly_detected == out.anomaly_detected
