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
from smap_shared.model.streams import RedisStateStore, StreamRegistry, encode_output

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
