"""The experiments' measurements: a variant's errors scored as the report's table row, and the start-state
measurement against the pipeline's own scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from research import experiments
from research.experiments import score_errors, score_variant, start_state_effect, table_row
from smap_shared.data import VendoredSource
from smap_shared.evaluation.metrics import ChannelMetrics, aggregate, count_metrics
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer

CHANNEL = "A-6"  # the shortest SMAP channel; one labelled segment, rows 1890-1930


def counts(by_name: dict[str, ChannelMetrics]) -> dict[str, tuple[object, object]]:
    """The event and point-wise counts of each entry (what a counts-only ChannelMetrics holds; its unset
    AUPRC is NaN, which never compares equal)."""
    return {k: (m.event, m.point) for k, m in by_name.items()}


def _errors(source: VendoredSource, bump: float) -> dict[str, npt.NDArray[np.float64]]:
    """Noise-level errors, with a bump of `bump` on the value column inside the labelled segment."""
    data = source.load(CHANNEL)
    rng = np.random.default_rng(0)
    tr = rng.uniform(0.0, 0.01, size=data.train.shape)
    te = rng.uniform(0.0, 0.01, size=data.test.shape)
    te[1895:1925, 0] += bump
    return {"train_score": tr.mean(axis=1), "train_err": tr, "test_score": te.mean(axis=1), "test_err": te}


def test_score_errors_finds_a_bump_in_the_segment(source: VendoredSource) -> None:
    out = score_errors(CHANNEL, _errors(source, bump=4.0))
    assert set(out) == {*experiments.SCORE_RULES, "oracle"}
    for name, t in out.items():
        assert t.event.tp + t.event.fn == 1, name  # one labelled event
        assert t.point.tp + t.point.fn == 41, name  # inclusive ends: 1890..1930
    assert out["causal_ndt"].event.tp == 1
    assert (out["oracle"].event.tp, out["oracle"].event.fp) == (1, 0)


def test_score_errors_misses_what_is_not_there(source: VendoredSource) -> None:
    out = score_errors(CHANNEL, _errors(source, bump=0.0))
    assert out["causal_ndt"].event.tp == 0 and out["causal_ndt_hybrid"].event.tp == 0


def test_score_variant_sums_the_channels_it_finds(source: VendoredSource, tmp_path: Path) -> None:
    errs = _errors(source, bump=4.0)
    with (tmp_path / f"{CHANNEL}.v1-test.npz").open("wb") as fh:
        np.savez(fh, **errs)
    row = score_variant(tmp_path, jobs=1)
    assert counts(row) == counts(score_errors(CHANNEL, errs))
    assert table_row(row["causal_ndt"]).startswith("1/")
    with pytest.raises(SystemExit, match="no variant errors"):
        score_variant(tmp_path / "empty", jobs=1)


def test_table_row_of_counts_summed_over_channels() -> None:
    a = count_metrics(np.array([0, 1, 1, 0, 0, 1], dtype=bool), [(1, 2)])
    assert (a.event.tp, a.event.fp, a.event.fn) == (1, 1, 0)
    assert (a.point.tp, a.point.fp, a.point.fn) == (2, 1, 0)
    total = aggregate([a, a])
    assert table_row(total) == "2/2/0, 0.667; 0.800"


def test_start_state_zero_start_is_the_pipeline(quick_ckpt_dir: Path, source: VendoredSource) -> None:
    """From a zero state with the deployed warm-up, the measurement is what Scorer.run (the Triton model's
    scoring) flags; a burnt-in state changes the value error over the first rows only a little."""
    ckpt_dir = quick_ckpt_dir
    res = start_state_effect(ckpt_dir, "A-1", (250, 0))
    assert set(res.tallies) == {"zero/250", "zero/0", "burn-in/250", "burn-in/0"}
    data = source.load("A-1")
    pipeline = Scorer(Checkpoint.load(ckpt_dir / "A-1.ckpt")).run(data.test).anomaly_detected
    ref = count_metrics(pipeline, [(iv.start, iv.end) for iv in data.labels])
    assert counts(res.tallies)["zero/250"] == (ref.event, ref.point)
    assert 0.0 <= res.first_rows_gap < 0.05
