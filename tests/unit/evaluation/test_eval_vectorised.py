"""The selection grid's vectorised form of CausalNdtRule gives exactly the decisions of the rule run step by
step (what the models do per frame), for every kind of option, on real SMAP values with model-like errors;
and past_range, its whole-array range, equals the per-step definition."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from smap_shared.data import VendoredSource
from smap_shared.evaluation.selection import GRID
from smap_shared.evaluation.vectorised import grid_detections
from smap_shared.model.rules import DEPLOYED_RULE, LATCH_RULE, QUIET_RULE, STEP_RULE, CausalNdtRule, past_range

Array = npt.NDArray[np.float64]


def errors_like_a_model(raw: Array, seed: int) -> tuple[Array, Array]:
    """Squared errors that follow the value's changes (as a reconstruction lags a jump), plus noise."""
    rng = np.random.default_rng(seed)
    x = raw[:, 0]
    lag = np.abs(np.diff(x, prepend=x[0]))
    err = np.column_stack([(0.02 + 0.5 * lag + 0.005 * rng.standard_normal(x.size)) ** 2,
                           (0.02 + 0.005 * rng.standard_normal(x.size)) ** 2])
    return err.mean(axis=1), err


#: every kind of option: the grid's telemanom, persistence and scale-free variants (a sample of each), the
#: unit-bound raw-value rules, and windows and latches the grid does not list
VARIANTS: dict[str, CausalNdtRule] = {
    **{k: v for i, (k, v) in enumerate(GRID.items()) if i % 7 == 0},
    "step": STEP_RULE, "quiet": QUIET_RULE, "latch": LATCH_RULE, "deployed": DEPLOYED_RULE,
    "quiet 20": replace(DEPLOYED_RULE, quiet_window=20, quiet_pad=0.35),
    "quiet 100, latch 0.9": replace(DEPLOYED_RULE, quiet_window=100, latch=0.9, scale_window=250),
    "deadband": replace(DEPLOYED_RULE, quiet_deadband=True),
    "deadband 100": replace(DEPLOYED_RULE, quiet_deadband=True, quiet_window=100, quiet_pad=0.35),
    "unit-bound deadband": replace(QUIET_RULE, quiet_deadband=True),
    "defaults": CausalNdtRule(),
}


@pytest.mark.parametrize("channel", ["A-1", "P-1", "T-3"])
def test_vectorised_grid_equals_the_rule_run_step_by_step(channel: str) -> None:
    data = VendoredSource().load(channel)
    first = data.labels[0].start  # from well before the channel's first labelled anomaly to past its start
    train_raw, test_raw = data.train[:1500], data.test[max(0, first - 1800) : first + 700]
    tr_s, tr_e = errors_like_a_model(train_raw, 1)
    te_s, te_e = errors_like_a_model(test_raw, 2)
    fast = grid_detections(VARIANTS, tr_s, tr_e, train_raw, te_s, te_e, test_raw)
    alarms = 0
    for name, rule in VARIANTS.items():
        slow = rule.fit(tr_s, tr_e, train_raw).run(te_s, te_e, raw=test_raw).detected
        assert np.array_equal(fast[name], slow), name
        alarms += int(slow.sum())
    assert alarms > 0  # the comparison saw alarms, not only quiet channels


def test_past_range_equals_its_per_step_definition() -> None:
    def reference(x: Array, blocks: int, block: int, include_current: bool) -> Array:
        out = np.full(x.size, np.nan)
        for t in range(x.size):
            lo = max(0, (t // block - blocks + 1) * block)
            seg = x[lo : t + 1] if include_current else x[lo:t]
            if seg.size >= 2:
                out[t] = float(seg.max() - seg.min())
        return out

    rng = np.random.default_rng(7)
    for trial in range(60):
        n, block, blocks = int(rng.integers(0, 300)), int(rng.integers(1, 40)), int(rng.integers(1, 9))
        x = rng.standard_normal(n) if trial % 2 else np.round(rng.standard_normal(n), 1)  # ties too
        for include in (False, True):
            assert np.array_equal(past_range(x, blocks, block, include), reference(x, blocks, block, include),
                                  equal_nan=True), (n, block, blocks, include)
