"""research.scale_free: its vectorised raw-value alarms are the deployed rule's, and ignore the units."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from research.explore_rules import WARMUP, Ch
from research.scale_free import ex_quiet_sf, ex_step_sf, rescaled
from smap_shared.data import VendoredSource
from smap_shared.evaluation.vectorised import onset
from smap_shared.model.rules import CausalNdtRule

Array = npt.NDArray[np.float64]


def channel(name: str) -> Ch:
    data = VendoredSource().load(name)
    return Ch(name, {"train_x": data.train[:, 0], "test_x": data.test[:, 0],
                     "segments": np.zeros((0, 2), dtype=np.int64)})


def raw_only(c: Ch, factor: float, w: int, pad: float) -> npt.NDArray[np.bool_]:
    """The rule's detections with only its raw-value alarms able to fire (no hold, no error alarm)."""
    rule = CausalNdtRule(window=210, stride=70, buffer=5, hold=0, warmup=WARMUP, persist=10**9,
                         step_factor=factor, quiet_window=50, quiet_pad=pad, scale_window=w)
    n_tr, n_te = c.train_x.size, c.test_x.size
    tr_raw, te_raw = np.zeros((n_tr, 2)), np.zeros((n_te, 2))
    tr_raw[:, 0], te_raw[:, 0] = c.train_x, c.test_x
    fitted = rule.fit(np.full(n_tr, 1e-4), np.full((n_tr, 2), 1e-4), tr_raw)
    out: npt.NDArray[np.bool_] = fitted.run(np.full(n_te, 1e-4), np.full((n_te, 2), 1e-4), raw=te_raw).detected
    return out


@pytest.mark.parametrize("name", ["A-6", "D-5", "P-1"])
def test_vectorised_alarms_are_the_rules(name: str) -> None:
    c = channel(name)
    for factor, w, pad in ((2.0, 700, 0.15), (1.25, 250, 0.35)):
        vec = ex_step_sf(c, factor, w) | onset(ex_quiet_sf(c, 50, pad, w))
        vec[:WARMUP] = False
        got = raw_only(c, factor, w, pad)
        assert np.array_equal(got, vec)
        moved = rescaled(c, 4.0, -1.5)
        assert np.array_equal(ex_step_sf(moved, factor, w), ex_step_sf(c, factor, w))
        assert np.array_equal(ex_quiet_sf(moved, 50, pad, w), ex_quiet_sf(c, 50, pad, w))
