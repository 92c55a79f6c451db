"""The models' stream state in the real Redis: one MULTI/EXEC per request, restored on load, another run's
history never kept, and states written by the previous layout (one hash per stream) still read."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer
from smap_shared.model.streams import TRIM_EVERY, RedisStateStore, StreamRegistry, encode_output

pytestmark = pytest.mark.integration

REDIS_URL = "redis://localhost:6379/8"


def test_state_survives_a_restart_and_a_new_run_drops_the_old_history(a1_ckpt: Checkpoint,
                                                                       source: VendoredSource) -> None:
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(REDIS_URL, model)
    try:
        seq = source.load("A-1").test[:60]
        reg = StreamRegistry(Scorer(a1_ckpt), store)
        reg.step_many(seq[:40], ["s"] * 40, list(range(40)), ["run-1"] * 40, [True] + [False] * 39)
        again = StreamRegistry(Scorer(a1_ckpt), RedisStateStore(REDIS_URL, model))  # a restarted model
        st, before = again.streams["s"], reg.streams["s"]
        np.testing.assert_array_equal(st.hidden, before.hidden)
        assert (st.last_index, st.run_id, sorted(st.history)) == (39, "run-1", list(range(40)))
        assert again.step(seq[39], "s", 39, run_id="run-1").duplicate
        # a new run: the stored history holds only the new run's outputs
        again.step_many(seq[:5], ["s"] * 5, list(range(5)), ["run-2"] * 5, [True] + [False] * 4)
        third = StreamRegistry(Scorer(a1_ckpt), RedisStateStore(REDIS_URL, model))
        assert sorted(third.streams["s"].history) == list(range(5))
        assert third.streams["s"].past_runs == ("run-1",)
        ref = Scorer(a1_ckpt).run(seq[:6])
        assert abs(third.step(seq[5], "s", 5, run_id="run-2").output.anomaly_score - ref.anomaly_score[5]) < 1e-12
    finally:
        store.clear()


def test_a_state_of_the_previous_layout_is_read(a1_ckpt: Checkpoint, source: VendoredSource) -> None:
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(REDIS_URL, model)
    try:
        scorer = Scorer(a1_ckpt)
        seq = source.load("A-1").test[:2]
        out, hidden = scorer.step(seq[0], scorer.initial_state())
        key, hist = store._keys("old")
        store.r.hset(key, mapping={"hidden": hidden.astype("<f8").tobytes(), "shape": json.dumps([hidden.size]),
                                   "last_index": "0", "steps": 1, "gaps": 0, "resets": 0})
        store.r.rpush(hist, encode_output(0, out))
        reg = StreamRegistry(scorer, store)
        assert reg.streams["old"].last_index == 0 and reg.streams["old"].run_id is None
        nxt = reg.step(seq[1], "old", 1)
        assert abs(nxt.output.anomaly_score - scorer.run(seq).anomaly_score[1]) < 1e-12
    finally:
        store.clear()


def test_the_output_list_stays_bounded_and_a_reload_keeps_the_last_history(a1_ckpt: Checkpoint,
                                                                          source: VendoredSource) -> None:
    """Lists are trimmed every TRIM_EVERY steps (not every step): never longer than history + TRIM_EVERY + one
    request's rows, and a restarted model holds exactly the last `history` outputs, as the live one does."""
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    history = 20
    store = RedisStateStore(REDIS_URL, model, history)
    try:
        seq = source.load("A-1").test[:150]
        reg = StreamRegistry(Scorer(a1_ckpt), store, history)
        lengths = []
        for start in range(0, 150, 7):  # requests of 7 rows
            rows = seq[start:start + 7]
            reg.step_many(rows, ["s"] * len(rows), list(range(start, start + len(rows))), ["r"] * len(rows),
                          [start == 0] + [False] * (len(rows) - 1))
            lengths.append(store.r.llen(store._keys("s")[1]))
        assert max(lengths) <= history + TRIM_EVERY + 7
        assert max(lengths) > history  # it does trim lazily (else this test proves nothing about the bound)
        again = StreamRegistry(Scorer(a1_ckpt), RedisStateStore(REDIS_URL, model, history), history)
        assert sorted(again.streams["s"].history) == sorted(reg.streams["s"].history) == list(range(130, 150))
    finally:
        store.clear()


def test_a_restart_between_snapshots_resumes_every_stream_bit_for_bit(a1_ckpt: Checkpoint,
                                                                      source: VendoredSource) -> None:
    """The whole state is written every few steps only; in between each output carries its step's state
    delta. A model restarted anywhere resumes each stream exactly where the live one is (gaps included), and
    goes on as if it had never stopped."""
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    history = 20  # snapshots every 10 steps
    store = RedisStateStore(REDIS_URL, model, history)
    try:
        seq = source.load("A-1").test[:80]
        sids = ["SAT-001/A-1", "SAT-002/A-1", "SAT-003/A-1"]
        live = StreamRegistry(Scorer(a1_ckpt), store, history)
        uninterrupted = StreamRegistry(Scorer(a1_ckpt), history=history)
        indices = [i for i in range(80) if i not in (17, 18, 40)]  # gaps: counted and journaled like steps
        replayed_any = False
        for start in range(0, len(indices), 3):  # requests of 3 rows of each stream, interleaved
            idx = indices[start:start + 3]
            rows = np.concatenate([seq[idx]] * len(sids))
            args = ([s for s in sids for _ in idx], idx * len(sids))
            live.step_many(rows, *args)
            uninterrupted.step_many(rows, *args)
            restarted = StreamRegistry(Scorer(a1_ckpt), RedisStateStore(REDIS_URL, model, history), history)
            for sid in sids:
                got, want = restarted.streams[sid], live.streams[sid]
                assert got.hidden.tobytes() == want.hidden.tobytes()
                assert (got.last_index, got.steps, got.gaps, sorted(got.history)) == (
                    want.last_index, want.steps, want.gaps, sorted(want.history))
                stored = RedisStateStore.decode_state(store.r.get(store._keys(sid)[0]), {})  # type: ignore[arg-type]
                assert 0 <= want.steps - stored.steps < store.snapshot_every
                replayed_any |= stored.steps < want.steps
            live = restarted  # carry on with the restarted model
        assert replayed_any  # the journal was used (else this test proves nothing about it)
        for sid in sids:
            assert live.streams[sid].hidden.tobytes() == uninterrupted.streams[sid].hidden.tobytes()
            assert live.streams[sid].gaps == 3
    finally:
        store.clear()


def test_an_output_after_the_snapshot_without_its_delta_starts_the_stream_over(
        a1_ckpt: Checkpoint, source: VendoredSource) -> None:
    """A journal that cannot be applied is never guessed at: the stream starts over (and says so)."""
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(REDIS_URL, model)
    try:
        scorer = Scorer(a1_ckpt)
        seq = source.load("A-1").test[:3]
        reg = StreamRegistry(scorer, store)
        reg.step_many(seq[:2], ["s", "s"], [0, 1])
        out = reg.step(seq[2], "s", 2).output
        store.r.rpush(store._keys("s")[1], encode_output(3, out))  # no delta
        assert "s" not in StreamRegistry(scorer, RedisStateStore(REDIS_URL, model)).streams
    finally:
        store.clear()


def test_a_state_lost_by_redis_is_written_whole_again_at_the_next_step(a1_ckpt: Checkpoint,
                                                                        source: VendoredSource) -> None:
    """Redis keeps nothing on disk: a Redis restart loses every snapshot while the model runs on. The next
    step notices (its list starts over) and writes the whole state, so a model restart after it still
    resumes exactly."""
    model = f"smap_test_{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(REDIS_URL, model)
    try:
        seq = source.load("A-1").test[:12]
        live = StreamRegistry(Scorer(a1_ckpt), store)
        live.step_many(seq[:5], ["s"] * 5, list(range(5)))
        live.step(seq[5], "s", 5)  # journaled only (not a snapshot step)
        stored = RedisStateStore.decode_state(store.r.get(store._keys("s")[0]), {})  # type: ignore[arg-type]
        assert stored.steps == 5  # the snapshot is older than the live state: the journal carries it
        store.clear()  # what a Redis restart does
        live.step(seq[6], "s", 6)
        again = StreamRegistry(Scorer(a1_ckpt), RedisStateStore(REDIS_URL, model))
        assert again.streams["s"].hidden.tobytes() == live.streams["s"].hidden.tobytes()
        assert again.streams["s"].last_index == 6
        nxt = again.step(seq[7], "s", 7).output.anomaly_score
        assert nxt == live.step(seq[7], "s", 7).output.anomaly_score
    finally:
        store.clear()
