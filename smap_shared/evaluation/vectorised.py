"""CausalNdtRule over a whole test split at once, for the selection grid: the same decisions as running the
rule step by step (`CausalNdtRule.run`, what the models do per frame), in a fraction of the time.

The rule's parts separate cleanly. The smoothed error `m` and telemanom's relative threshold depend only on
the model's errors and on `cap_flagged` (what enters the threshold's window), never on the alarms; they come
from one step-by-step run of the rule with every alarm but the relative one off (`traces`), shared by every
variant with the same threshold settings. The alarms are then whole-split array operations: the persisted
relative alarm, the train-level alarm, the raw value's steps and quiet spells (the scale-free ratios of
`smap_shared.model.rules`), the warm-up, the hold; only the latch is a short loop. `detections` must equal
`CausalNdtRule.run(...).detected` for every rule it accepts: tests/unit/evaluation check it on real channels
for every kind of option, and the evaluation checks the deployed variant on every channel it scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from smap_shared.model.rules import CausalNdtRule, quiet_ratio, rolling_std, step_ratio

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Options that act on the alarms only; every other setting (window, stride, z range, pruning, cap_flagged,
#: EWMA span, ...) shapes the smoothed error or the relative threshold and so selects the shared traces.
ALARM_FIELDS = frozenset({"or_margin", "persist", "step_factor", "quiet_window", "quiet_pad", "quiet_deadband",
                          "latch", "scale_window", "hold"})
FITTED = frozenset({"train_max", "train_max_step", "train_quiet_min", "train_quiet_max", "initial"})


def hold(exceed: BoolArray, h: int) -> BoolArray:
    """Flags t..t+h after every exceedance (the rule's hold).

    >>> hold(np.array([0, 1, 0, 0, 0, 1, 0], dtype=bool), 2).astype(int).tolist()
    [0, 1, 1, 1, 0, 1, 1]
    """
    c = np.concatenate(([0], np.cumsum(exceed.astype(np.int64))))
    idx = np.arange(exceed.size)
    out: BoolArray = (c[idx + 1] - c[np.maximum(idx - h, 0)]) > 0
    return out


def persist(exceed: BoolArray, k: int) -> BoolArray:
    """True where the last k steps all exceeded (the relative alarm's debounce).

    >>> persist(np.array([1, 1, 0, 1, 1, 1], dtype=bool), 2).astype(int).tolist()
    [0, 1, 0, 0, 1, 1]
    """
    if k <= 1:
        return exceed
    c = np.concatenate(([0], np.cumsum(exceed.astype(np.int64))))
    idx = np.arange(exceed.size)
    out: BoolArray = (c[idx + 1] - c[np.maximum(idx + 1 - k, 0)]) >= k
    return out


def onset(e: BoolArray) -> BoolArray:
    """Rising edges only (the quiet alarm fires on entering its condition).

    >>> onset(np.array([1, 1, 0, 1], dtype=bool)).astype(int).tolist()
    [1, 0, 0, 1]
    """
    r = e.copy()
    r[1:] &= ~e[:-1]
    return r


def latched(held: BoolArray, m: Array, threshold: Array, lam: float) -> BoolArray:
    """Past its hold an alarm stays up while the signal is above lam x the threshold in force when it began
    (the rule's latch; lam 0: off).

    >>> held = np.array([0, 1, 1, 0, 0, 0], dtype=bool)
    >>> latched(held, np.array([0, 5, 5, 4, 3, 5.0]), np.full(6, 3.5), 1.0).astype(int).tolist()
    [0, 1, 1, 1, 0, 0]
    """
    if lam <= 0 or not held.any():
        return held
    out = held.copy()
    on, ref = False, 0.0
    start = int(np.argmax(held))
    for t, (h, v) in enumerate(zip(held[start:].tolist(), m[start:].tolist(), strict=True), start):
        if h:
            if not on:
                ref = float(threshold[t])
            on = True
        elif on and v > lam * ref:
            out[t] = True
        else:
            on = False
    return out


@dataclass(frozen=True)
class Traces:
    """What every variant with the same threshold settings shares: the smoothed error and the relative
    threshold at each step of the test split."""

    m: Array
    relative: Array


def threshold_key(rule: CausalNdtRule) -> CausalNdtRule:
    """The rule with its alarm options and fitted values reset: variants with equal keys share traces."""
    return replace(rule, **{f.name: getattr(CausalNdtRule(), f.name) for f in fields(rule)
                            if f.name in ALARM_FIELDS | FITTED})


def traces(rule: CausalNdtRule, train_scores: Array, train_errors: Array, scores: Array, errors: Array
           ) -> Traces:
    """One step-by-step run with the relative alarm only: its signal and threshold are `m` and the relative
    threshold of every variant sharing `threshold_key(rule)` (neither depends on any alarm)."""
    base = threshold_key(rule).fit(train_scores, train_errors)
    run = base.run(scores, errors)
    return Traces(run.signal, run.threshold)


def detections(rule: CausalNdtRule, tr: Traces, raw_test: Array) -> BoolArray:
    """`rule.run(...).detected` for a fitted rule, from the traces of its threshold settings."""
    m, rel = tr.m, tr.relative
    n = m.size
    train_level = rule.or_margin * rule.train_max
    threshold = np.minimum(rel, train_level) if rule.or_margin > 0 else rel
    exceed = persist(m > rel, max(rule.persist, 1))
    if rule.or_margin > 0:
        exceed = exceed | (m > train_level)
    value = np.asarray(raw_test, dtype=np.float64)[:, rule.value_column]
    exceed = exceed | _steps(rule, value) | onset(_quiet(rule, value))
    exceed[: min(rule.warmup, n)] = False
    return latched(hold(exceed, rule.hold), m, threshold, rule.latch)


def _steps(rule: CausalNdtRule, x: Array) -> BoolArray:
    if rule.step_factor <= 0 or rule.train_max_step < 0:
        return np.zeros(x.size, dtype=bool)
    if rule.scale_window > 0:
        step = np.nan_to_num(step_ratio(x, rule.scale_blocks, rule.stride), nan=0.0)
    else:
        step = np.abs(np.diff(x, prepend=np.nan))
        step[0] = 0.0  # a stream's first step counts as no step
    out: BoolArray = step > rule.step_factor * rule.train_max_step if rule.train_max_step > 0 else step > 0.0
    return out


def _quiet(rule: CausalNdtRule, x: Array) -> BoolArray:
    level = rule.quiet_level
    w = rule.quiet_window
    out = np.zeros(x.size, dtype=bool)
    if level == -math.inf or x.size < w:
        return out
    sd = quiet_ratio(x, w, rule.scale_blocks, rule.stride)[w - 1 :] if rule.scale_window > 0 else rolling_std(x, w)
    if not rule.quiet_deadband:
        out[w - 1 :] = sd < level
        return out
    on, leave = False, rule.train_quiet_min  # a spell in force lasts until the std is back at the train minimum
    for t, v in enumerate(sd.tolist(), w - 1):
        on = v < (leave if on else level)
        out[t] = on
    return out


#: Options that do not change what `CausalNdtRule.fit` computes (only whether the step alarm is on does).
_NOT_FITTED = ("cap_flagged", "or_margin", "persist", "quiet_pad", "quiet_deadband", "latch", "hold")


def _fit_key(rule: CausalNdtRule) -> CausalNdtRule:
    defaults = CausalNdtRule()
    return replace(rule, step_factor=1.0 if rule.step_factor > 0 else 0.0,
                   **{name: getattr(defaults, name) for name in _NOT_FITTED})


def grid_detections(
    grid: Mapping[str, CausalNdtRule], train_scores: Array, train_errors: Array, train_raw: Array,
    scores: Array, errors: Array, raw: Array,
) -> dict[str, BoolArray]:
    """Every variant's detections on one channel: one step-by-step run per threshold setting, one fit per
    set of fitted options, the rest whole-split array operations."""
    shared: dict[CausalNdtRule, Traces] = {}
    fits: dict[CausalNdtRule, CausalNdtRule] = {}
    out: dict[str, BoolArray] = {}
    for name, rule in grid.items():
        key = threshold_key(rule)
        if key not in shared:
            shared[key] = traces(rule, train_scores, train_errors, scores, errors)
        fkey = _fit_key(rule)
        if fkey not in fits:
            fits[fkey] = fkey.fit(train_scores, train_errors, train_raw)
        f = fits[fkey]
        fitted = replace(rule, **{field: getattr(f, field) for field in FITTED})
        out[name] = detections(fitted, shared[key], raw)
    return out
