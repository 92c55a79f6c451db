"""Detection metrics for labelled anomaly segments, pure numpy.

Conventions (all intervals are inclusive `[start, end]` row indices of the test split, as in
`labeled_anomalies.csv`; segments reaching past the series are clipped to it):

* event level (telemanom, KDD 2018): a labelled segment is a true positive when any flagged row lies in
  it, else a false negative; each maximal run of flagged rows that overlaps no labelled segment is one
  false positive. One run spanning two segments detects both and costs nothing.
* point-wise: rows counted as they are, no point-adjust.
* PA%K (Kim et al., AAAI 2022, as in their `tadpak`): a segment whose fraction of flagged rows is strictly
  above K/100 is flagged whole, then point-wise counts. K=0 is the classic point-adjust (PA), K=100 the
  plain point-wise score. The area is the trapezoid under F1(K) for K = 0..100 in steps of 1, over 100.
* undefined ratios: precision is 1 when nothing was flagged (no alarm, no false alarm), recall is 1 when
  there is nothing to find; F1 is 0 when precision + recall is 0. AUPRC / ROC-AUC are NaN with one class.
* detection delay: rows from a segment's start to its first flagged row inside it (detected ones only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Span = tuple[int, int]

#: K values of PA%K reported one by one (the area uses every integer K in [0, 100]).
PA_K_REPORTED = (0, 20, 50, 80, 100)
PA_K_GRID = tuple(range(101))


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "precision": self.precision, "recall": self.recall, "f1": self.f1,
        }


def sum_counts(items: Iterable[Counts]) -> Counts:
    total = Counts(0, 0, 0)
    for c in items:
        total = total + c
    return total


def runs(mask: npt.ArrayLike) -> list[Span]:
    """Maximal runs of True as inclusive (start, end) pairs."""
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    if m.size == 0:
        return []
    d = np.diff(np.concatenate(([0], m, [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def clip_segments(segments: Iterable[Span], length: int) -> list[Span]:
    """Inclusive segments cut to rows [0, length); empty ones dropped; sorted."""
    out = [(max(0, int(a)), min(int(b), length - 1)) for a, b in segments]
    return sorted((a, b) for a, b in out if a <= b)


def segment_mask(segments: Iterable[Span], length: int) -> BoolArray:
    mask = np.zeros(length, dtype=bool)
    for a, b in clip_segments(segments, length):
        mask[a : b + 1] = True
    return mask


@dataclass(frozen=True)
class EventResult:
    counts: Counts
    detected: list[bool]  # per labelled segment, in order
    delays: list[int | None]  # per labelled segment: rows from start to first flag inside, None if missed
    false_runs: list[Span] = field(default_factory=list)


def event_metrics(pred: npt.ArrayLike, segments: Sequence[Span]) -> EventResult:
    """telemanom's event-level counts, with per-segment detection and delay."""
    p = np.asarray(pred, dtype=bool)
    segs = clip_segments(segments, p.size)
    detected: list[bool] = []
    delays: list[int | None] = []
    for a, b in segs:
        hits = np.flatnonzero(p[a : b + 1])
        detected.append(hits.size > 0)
        delays.append(int(hits[0]) if hits.size else None)
    labelled = segment_mask(segs, p.size)
    false_runs = [(a, b) for a, b in runs(p) if not labelled[a : b + 1].any()]
    tp = sum(detected)
    return EventResult(Counts(tp, len(false_runs), len(segs) - tp), detected, delays, false_runs)


def cause_tally(pred: npt.ArrayLike, cause: npt.ArrayLike, segments: Sequence[Span]) -> dict[str, dict[str, int]]:
    """Which alarms did the work: per cause name (smap_shared.model.rules.ALARM_CAUSES), the detected events
    whose first flagged row carried it and the false-alarm runs (event level) that carried it anywhere."""
    from smap_shared.model.rules import ALARM_CAUSES

    p = np.asarray(pred, dtype=bool)
    c = np.asarray(cause, dtype=np.int64)
    if p.shape != c.shape:
        raise ValueError(f"pred {p.shape} and cause {c.shape} differ in shape")
    ev = event_metrics(p, segments)
    found = dict.fromkeys(ALARM_CAUSES.values(), 0)
    false = dict.fromkeys(ALARM_CAUSES.values(), 0)
    for (a, _), delay in zip(clip_segments(segments, p.size), ev.delays, strict=True):
        if delay is not None:
            for bit, name in ALARM_CAUSES.items():
                found[name] += bool(c[a + delay] & bit)
    for a, b in ev.false_runs:
        bits = int(np.bitwise_or.reduce(c[a : b + 1]))
        for bit, name in ALARM_CAUSES.items():
            false[name] += bool(bits & bit)
    return {"events": found, "false_alarms": false}


def point_counts(pred: npt.ArrayLike, truth: npt.ArrayLike) -> Counts:
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    return Counts(int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t)))


def pa_k_counts(pred: npt.ArrayLike, segments: Sequence[Span], ks: Sequence[float] = PA_K_GRID) -> list[Counts]:
    """Point-wise counts after PA%K adjustment, one per K (adjustment only ever adds true positives)."""
    p = np.asarray(pred, dtype=bool)
    segs = clip_segments(segments, p.size)
    base = point_counts(p, segment_mask(segs, p.size))
    lengths = np.array([b - a + 1 for a, b in segs], dtype=np.int64)
    hits = np.array([int(p[a : b + 1].sum()) for a, b in segs], dtype=np.int64)
    out: list[Counts] = []
    for k in ks:
        adjusted = hits > (k / 100.0) * lengths
        gain = int(np.sum((lengths - hits)[adjusted]))
        out.append(Counts(base.tp + gain, base.fp, base.fn - gain))
    return out


def pa_k_area(counts: Sequence[Counts], ks: Sequence[float] = PA_K_GRID) -> float:
    """Area under F1(K) over K in [0, 100], normalised to [0, 1] (trapezoid)."""
    f1 = np.array([c.f1 for c in counts])
    k = np.asarray(ks, dtype=np.float64)
    return float(np.sum((f1[1:] + f1[:-1]) / 2 * np.diff(k)) / (k[-1] - k[0]))


def _distinct_threshold_curve(scores: Array, truth: BoolArray) -> tuple[Array, Array]:
    """Cumulative TP and FP counts at each distinct score, highest score first (ties kept together)."""
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(t)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1 - tps).astype(np.float64)
    return tps, fps


def average_precision(scores: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as average precision: sum of (R_n - R_{n-1}) P_n."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    n_pos = int(t.sum())
    if n_pos in (0, t.size):
        return math.nan
    tps, fps = _distinct_threshold_curve(s, t)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Probability that a random anomalous row outscores a random normal one (ties count one half)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average 1-based rank within each group of tied scores
    bounds = np.r_[0, np.flatnonzero(np.diff(sorted_s) != 0) + 1, s.size]
    for a, b in itertools.pairwise(bounds):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class ChannelMetrics:
    """All metrics of one channel (or, through `aggregate`, of a set of channels)."""

    event: Counts
    point: Counts
    pa_k: list[Counts]  # one per K of PA_K_GRID
    auprc: float
    roc_auc: float
    delays: list[int]  # detected segments only
    n_rows: int
    n_segments: int

    def as_dict(self) -> dict[str, object]:
        curve = dict(zip(PA_K_GRID, self.pa_k, strict=True))
        return {
            "event": self.event.as_dict(),
            "point": self.point.as_dict(),
            "pa_k": {
                "by_k": {str(k): curve[k].as_dict() for k in PA_K_REPORTED},
                "f1_area": pa_k_area(self.pa_k),
            },
            "auprc": _json_float(self.auprc),
            "roc_auc": _json_float(self.roc_auc),
            "delay": {
                "mean": float(np.mean(self.delays)) if self.delays else None,
                "median": float(np.median(self.delays)) if self.delays else None,
                "detected": len(self.delays),
            },
            "rows": self.n_rows,
            "segments": self.n_segments,
        }


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def channel_metrics(pred: npt.ArrayLike, scores: npt.ArrayLike, segments: Sequence[Span]) -> ChannelMetrics:
    """Metrics of one channel's decisions `pred` and raw `scores` against its labelled `segments`."""
    p = np.asarray(pred, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if p.shape != s.shape or p.ndim != 1:
        raise ValueError(f"pred {p.shape} and scores {s.shape} must be equal 1-D shapes")
    segs = clip_segments(segments, p.size)
    truth = segment_mask(segs, p.size)
    ev = event_metrics(p, segs)
    return ChannelMetrics(
        event=ev.counts,
        point=point_counts(p, truth),
        pa_k=pa_k_counts(p, segs),
        auprc=average_precision(s, truth),
        roc_auc=roc_auc(s, truth),
        delays=[d for d in ev.delays if d is not None],
        n_rows=p.size,
        n_segments=len(segs),
    )


def counts_only(event: Counts, point: Counts, n_rows: int, n_segments: int) -> ChannelMetrics:
    """Metrics holding only the event and point-wise counts (no PA%K, AUPRC, ROC-AUC or delays): the cheap
    part of `channel_metrics`, for searches over many variants; `aggregate` sums them like full ones."""
    return ChannelMetrics(event, point, [], math.nan, math.nan, [], n_rows, n_segments)


def count_metrics(pred: npt.ArrayLike, segments: Sequence[Span]) -> ChannelMetrics:
    """`counts_only` of one channel's decisions against its labelled segments."""
    p = np.asarray(pred, dtype=bool)
    segs = clip_segments(segments, p.size)
    return counts_only(event_metrics(p, segs).counts, point_counts(p, segment_mask(segs, p.size)), p.size,
                       len(segs))


def aggregate(items: Sequence[ChannelMetrics]) -> ChannelMetrics:
    """Counts summed over channels (micro); AUPRC / ROC-AUC are the mean over channels where defined."""
    if not items:
        raise ValueError("nothing to aggregate")
    auprc = [m.auprc for m in items if not math.isnan(m.auprc)]
    auc = [m.roc_auc for m in items if not math.isnan(m.roc_auc)]
    return ChannelMetrics(
        event=sum_counts(m.event for m in items),
        point=sum_counts(m.point for m in items),
        pa_k=[sum_counts(cs) for cs in zip(*(m.pa_k for m in items), strict=True)],
        auprc=float(np.mean(auprc)) if auprc else math.nan,
        roc_auc=float(np.mean(auc)) if auc else math.nan,
        delays=[d for m in items for d in m.delays],
        n_rows=sum(m.n_rows for m in items),
        n_segments=sum(m.n_segments for m in items),
    )
