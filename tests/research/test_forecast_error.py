"""research.forecast_error: the read-out sees only the state before the step it forecasts."""

from __future__ import annotations

import doctest

import numpy as np

from research import forecast_error
from research.forecast_error import fit_readout, hidden_before
from research.forecast_error import forecast_error as f_error
from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer


def test_docstring_examples() -> None:
    assert doctest.testmod(forecast_error).failed == 0


def test_the_state_before_each_step_is_the_streams_and_never_holds_the_value_it_forecasts(
        a1_ckpt: Checkpoint) -> None:
    scorer = Scorer(a1_ckpt)
    z = scorer.norm.transform(VendoredSource().load("A-1").test[:30])
    h = hidden_before(scorer.net, z)
    assert np.array_equal(h[0], np.zeros(64))  # a stream starts from zeros
    state = scorer.net.initial_state()
    for t in range(5):
        assert np.array_equal(h[t], state.reshape(-1))
        _, _, state = scorer.net.step(z[t], state)
    # changing the value at t changes no state before it: the forecast of step t cannot see x_t
    z2 = z.copy()
    z2[10, 0] += 0.5
    h2 = hidden_before(scorer.net, z2)
    assert np.array_equal(h2[:11], h[:11]) and not np.array_equal(h2[11], h[11])


def test_a_perfect_linear_forecast_has_no_error() -> None:
    rng = np.random.default_rng(1)
    h = rng.normal(size=(400, 64))
    z = np.zeros((400, 3))
    z[:, 0] = h @ rng.normal(size=64) + 0.25
    w = fit_readout(h, z[:, 0], 1e-12)
    assert float(f_error(h, z, w).max()) < 1e-8
