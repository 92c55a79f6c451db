from __future__ import annotations

import numpy as np
import pytest

from smap_shared.model.threshold import SPEC_FIXED_THRESHOLD, fixed_threshold, pot_threshold


def test_pot_on_a_smooth_tail_is_above_the_train_max_and_finite() -> None:
    rng = np.random.default_rng(0)
    scores = rng.exponential(0.01, 5000)
    fit = pot_threshold(scores, risk=1e-4)
    assert fit.method == "pot"
    assert scores.max() <= fit.value < 10 * scores.max()


def test_plateau_scores_fall_back_to_empirical() -> None:
    """Scores on plateaus (one command flag wrong adds exactly 1/25) make the GPD fit degenerate."""
    scores = np.concatenate([np.full(3000, 0.001), np.full(100, 0.001 + 1 / 25)])
    fit = pot_threshold(scores)
    assert fit.method == "empirical"
    assert fit.value == pytest.approx(scores.max() * 1.2)


def test_too_few_scores() -> None:
    with pytest.raises(ValueError, match="at least 50"):
        pot_threshold(np.ones(10))


def test_fixed_fallback() -> None:
    assert fixed_threshold().value == SPEC_FIXED_THRESHOLD == 0.16
