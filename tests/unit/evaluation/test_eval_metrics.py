"""Every metric on small hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smap_shared.evaluation.metrics import (
    PA_K_GRID,
    ChannelMetrics,
    Counts,
    aggregate,
    average_precision,
    cause_tally,
    channel_metrics,
    clip_segments,
    event_metrics,
    pa_k_area,
    pa_k_counts,
    point_counts,
    roc_auc,
    runs,
)


def flags(length: int, *rows: int) -> npt.NDArray[np.bool_]:
    out = np.zeros(length, dtype=bool)
    out[list(rows)] = True
    return out


def test_runs_are_inclusive_maximal() -> None:
    assert runs([0, 1, 1, 0, 1]) == [(1, 2), (4, 4)]
    assert runs([1, 1, 1]) == [(0, 2)]
    assert runs([0, 0]) == []
    assert runs([]) == []


def test_counts_conventions() -> None:
    assert Counts(0, 0, 0).as_dict() == {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert (Counts(0, 0, 3).precision, Counts(0, 0, 3).recall, Counts(0, 0, 3).f1) == (1.0, 0.0, 0.0)
    assert (Counts(0, 2, 0).precision, Counts(0, 2, 0).recall, Counts(0, 2, 0).f1) == (0.0, 1.0, 0.0)
    c = Counts(3, 1, 2)
    assert c.precision == 0.75 and c.recall == 0.6
    assert c.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_event_end_is_inclusive() -> None:
    # segment [2, 4]: a flag on row 4 (the end) detects it
    ev = event_metrics(flags(10, 4), [(2, 4)])
    assert ev.counts == Counts(1, 0, 0)
    assert ev.delays == [2]
    # a flag on row 5, just past the end, is a miss plus one false positive
    ev = event_metrics(flags(10, 5), [(2, 4)])
    assert ev.counts == Counts(0, 1, 1)
    assert ev.false_runs == [(5, 5)]
    assert ev.delays == [None]


def test_event_start_is_inclusive_and_delay_zero() -> None:
    ev = event_metrics(flags(10, 2, 3), [(2, 4)])
    assert ev.counts == Counts(1, 0, 0)
    assert ev.delays == [0]


def test_event_empty_label_set() -> None:
    assert event_metrics(np.zeros(8, dtype=bool), []).counts == Counts(0, 0, 0)
    ev = event_metrics(flags(8, 1, 2, 5), [])
    assert ev.counts == Counts(0, 2, 0)  # two runs: [1, 2] and [5, 5]
    assert ev.counts.precision == 0.0 and ev.counts.f1 == 0.0


def test_event_detection_spanning_two_segments() -> None:
    pred = np.zeros(12, dtype=bool)
    pred[3:9] = True  # rows 3..8 cover the end of [2, 4], the gap 5..6 and the start of [7, 9]
    ev = event_metrics(pred, [(2, 4), (7, 9)])
    assert ev.counts == Counts(2, 0, 0)
    assert ev.delays == [1, 0]
    # point-wise, the gap rows are false positives and the uncovered ends false negatives
    truth = np.zeros(12, dtype=bool)
    truth[2:5] = truth[7:10] = True
    assert point_counts(pred, truth) == Counts(4, 2, 2)


def test_event_run_overlapping_a_segment_is_not_a_false_positive() -> None:
    pred = np.zeros(20, dtype=bool)
    pred[8:15] = True  # starts before [10, 12] and ends after it: one run, one detection, no FP
    pred[17] = True  # a separate run outside: one FP
    ev = event_metrics(pred, [(10, 12)])
    assert ev.counts == Counts(1, 1, 0)
    assert ev.delays == [0]


def test_segments_past_the_series_are_clipped() -> None:
    assert clip_segments([(8, 15), (20, 30), (1, 2)], 10) == [(1, 2), (8, 9)]
    ev = event_metrics(flags(10, 9), [(8, 15), (20, 30)])
    assert ev.counts == Counts(1, 0, 0)


def test_point_counts() -> None:
    pred = np.array([1, 1, 0, 0, 1], dtype=bool)
    truth = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert point_counts(pred, truth) == Counts(1, 2, 1)
    with pytest.raises(ValueError, match="shape"):
        point_counts(pred, truth[:3])


def test_pa_k_at_0_20_30_and_100() -> None:
    # one segment [0, 9] (10 rows) with 3 rows flagged, and one false positive at row 12
    pred = flags(15, 0, 1, 2, 12)
    seg = [(0, 9)]
    k0, k20, k30, k100 = pa_k_counts(pred, seg, [0, 20, 30, 100])
    assert k0 == Counts(10, 1, 0)  # classic point-adjust: any hit flags the whole segment
    assert k20 == Counts(10, 1, 0)  # 3/10 > 0.2
    assert k30 == Counts(3, 1, 7)  # 3/10 is not strictly above 0.3
    assert k100 == Counts(3, 1, 7)  # K=100 is the plain point-wise count
    assert k100 == point_counts(pred, flags(15, *range(10)))


def test_pa_k_0_needs_at_least_one_hit() -> None:
    (k0,) = pa_k_counts(np.zeros(15, dtype=bool), [(0, 9)], [0])
    assert k0 == Counts(0, 0, 10)


def test_pa_k_100_on_a_fully_flagged_segment() -> None:
    pred = flags(6, 1, 2, 3)
    (k100,) = pa_k_counts(pred, [(1, 3)], [100])
    assert k100 == Counts(3, 0, 0)


def test_pa_k_area() -> None:
    constant = [Counts(3, 1, 2)] * len(PA_K_GRID)
    assert pa_k_area(constant) == pytest.approx(Counts(3, 1, 2).f1)
    # F1 1.0 for K in [0, 50) and 0.0 from 50 on: trapezoid gives (50 - 0.5) / 100
    step = [Counts(1, 0, 0) if k < 50 else Counts(0, 0, 1) for k in PA_K_GRID]
    assert pa_k_area(step) == pytest.approx(0.495)


def test_average_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    truth = np.array([1, 0, 1, 0], dtype=bool)
    assert average_precision(scores, truth) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision(scores, np.array([1, 1, 0, 0], dtype=bool)) == pytest.approx(1.0)
    # a tie between a positive and a negative is one threshold: precision 1/2 at recall 1
    assert average_precision(np.array([1.0, 1.0]), np.array([1, 0], dtype=bool)) == pytest.approx(0.5)
    assert math.isnan(average_precision(scores, np.zeros(4, dtype=bool)))


def test_roc_auc() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    truth = np.array([1, 0, 1, 0], dtype=bool)
    assert roc_auc(scores, truth) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered right
    assert roc_auc(scores, np.array([0, 0, 1, 1], dtype=bool)) == pytest.approx(0.0)
    assert roc_auc(np.ones(4), truth) == pytest.approx(0.5)  # all tied
    assert math.isnan(roc_auc(scores, np.ones(4, dtype=bool)))


def test_channel_metrics_and_aggregate_sum_counts() -> None:
    a = channel_metrics(flags(10, 2, 3, 7), np.arange(10.0), [(2, 4)])
    assert a.event == Counts(1, 1, 0)
    assert a.point == Counts(2, 1, 1)
    assert a.delays == [0]
    b = channel_metrics(np.zeros(10, dtype=bool), np.zeros(10), [(5, 5), (8, 9)])
    assert b.event == Counts(0, 0, 2)
    assert math.isnan(b.auprc) is False and b.roc_auc == pytest.approx(0.5)
    total = aggregate([a, b])
    assert total.event == Counts(1, 1, 2)
    # micro F1 from summed counts: P 1/2, R 1/3 -> 0.4; the mean of the F1s would be (2/3 + 0) / 2
    assert total.event.f1 == pytest.approx(0.4)
    assert total.point == Counts(2, 1, 4)
    assert total.pa_k[0] == Counts(3, 1, 3)
    d = total.as_dict()
    assert set(d) >= {"event", "point", "pa_k", "auprc", "roc_auc", "delay"}
    assert set(d["pa_k"]["by_k"]) == {"0", "20", "50", "80", "100"}  # type: ignore[index]
    assert d["delay"] == {"mean": 0.0, "median": 0.0, "detected": 1}


def test_oracle_picks_the_best_static_threshold_with_the_labels() -> None:
    from smap_shared.evaluation.selection import oracle_counts

    ev, pt = oracle_counts(np.r_[np.zeros(50), np.ones(10), np.zeros(40)], [(50, 59)], skip=0)
    assert ev == Counts(1, 0, 0) and pt == Counts(10, 0, 0)



def test_cause_tally_counts_first_flags_of_events_and_whole_false_runs() -> None:
    # events [2, 4] and [10, 12]; alarms at 3-5 (first flag of event 1 at 3, cause 4), 11 (cause 1 | 8),
    # and a false run 15-17 whose causes change inside it (2, then 2 | 4)
    pred = flags(20, 3, 4, 5, 11, 15, 16, 17)
    cause = np.zeros(20, dtype=np.int64)
    cause[[3, 4, 5]] = [4, 5, 5]
    cause[11] = 1 | 8
    cause[[15, 16, 17]] = [2, 6, 6]
    out = cause_tally(pred, cause, [(2, 4), (10, 12)])
    assert out["events"] == {"error_above_threshold": 1, "error_above_train_level": 0, "value_step": 1,
                             "value_quiet": 1}
    assert out["false_alarms"] == {"error_above_threshold": 0, "error_above_train_level": 1, "value_step": 1,
                                   "value_quiet": 0}
    empty = cause_tally(np.zeros(5, dtype=bool), np.zeros(5, dtype=np.int64), [])
    assert set(empty["events"].values()) == set(empty["false_alarms"].values()) == {0}
    with pytest.raises(ValueError, match="shape"):
        cause_tally(pred, cause[:5], [])


def _cm(tp: int, fp: int, fn: int) -> ChannelMetrics:
    c = Counts(tp, fp, fn)
    return ChannelMetrics(c, c, [c] * len(PA_K_GRID), 0.5, 0.5, [], 10, tp + fn)


def test_leave_one_family_out_scores_each_family_with_the_others_choice() -> None:
    from smap_shared.evaluation.selection import cross_validate

    # variant "a" wins on family A, "b" on family B
    per = {
        "A-1": {"a": _cm(1, 0, 0), "b": _cm(0, 5, 1)},
        "A-2": {"a": _cm(1, 0, 0), "b": _cm(0, 5, 1)},
        "B-1": {"a": _cm(0, 5, 1), "b": _cm(1, 0, 0)},
        "B-2": {"a": _cm(0, 5, 1), "b": _cm(1, 0, 0)},
    }
    folds, held = cross_validate(per)
    assert [(f.held_out, f.selected) for f in folds] == [("A", "b"), ("B", "a")]
    assert folds[0].select_on == ["B-1", "B-2"] and folds[0].evaluate_on == ["A-1", "A-2"]
    assert held.event == Counts(0, 20, 4)  # each family is scored with the variant that is worst for it
    with pytest.raises(ValueError, match="two groups"):
        cross_validate({"A-1": per["A-1"], "A-2": per["A-2"]})


COUNTS = st.builds(_cm, st.integers(0, 3), st.integers(0, 6), st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), families=st.integers(2, 4), variants=st.integers(1, 4))
def test_a_held_out_familys_labels_never_reach_its_choice(data: st.DataObject, families: int,
                                                          variants: int) -> None:
    """A variant planted to be perfect on one family only (what looking at that family's test labels would
    pick) is never the choice that scores that family; and whatever the held-out family's results are (its
    labels changed at will), the choice for it does not move."""
    from smap_shared.evaluation.selection import cross_validate

    names = [f"v{i}" for i in range(variants)]
    fams = [chr(ord("A") + i) for i in range(families)]
    per = {f"{fam}-{n}": {v: data.draw(COUNTS) for v in names} for fam in fams for n in (1, 2)}
    target = data.draw(st.sampled_from(fams))
    for chan, m in per.items():  # "leak": perfect on the target family, worst possible elsewhere
        m["leak"] = _cm(5, 0, 0) if chan.startswith(target) else _cm(0, 50, 5)
    folds, _ = cross_validate(per)
    fold = next(f for f in folds if f.held_out == target)
    assert fold.selected != "leak"
    changed = {c: ({v: data.draw(COUNTS) for v in m} if c.startswith(target) else m) for c, m in per.items()}
    again = next(f for f in cross_validate(changed)[0] if f.held_out == target)
    assert again.selected == fold.selected


def test_the_deployed_rule_is_one_of_the_variants_the_selection_chooses_among() -> None:
    """The report's headline is the held-out score of choosing among GRID: the deployed rule must be a
    candidate of that choice (and its raw-value alarms scale-free: a unit-bound one is not a candidate)."""
    from smap_shared.evaluation.selection import GRID
    from smap_shared.model.rules import DEPLOYED_RULE

    assert DEPLOYED_RULE in GRID.values()
    assert all(r.scale_window > 0 for r in GRID.values() if r.step_factor > 0 or r.quiet_window > 0)
    # the quiet window is the protocol's choice too (it was fixed at 50, picked by looking at test events),
    # and every quiet alarm has its deadband
    assert {r.quiet_window for r in GRID.values() if r.quiet_window > 0} == {20, 50, 100}
    assert all(r.quiet_deadband for r in GRID.values() if r.quiet_window > 0)
