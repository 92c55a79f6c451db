"""Decision rules: turn each step's model output into an alarm, causally, one step at a time.

A rule is fitted on the TRAIN split's scores and per-sensor errors only (test labels are never seen) and
then applied to a stream. Its parameters are JSON-serialisable (`to_dict` / `rule_from_dict`) and its
per-stream memory is one flat float64 vector (`initial_state()`) that `step` updates in place, so a server
keeps one vector per stream and can persist it. `run` makes the same `step` calls over a whole sequence, so
the offline evaluation and a stream agree by construction (see the tests).

* `FixedRule`: score > 0.16, the spec's threshold.
* `TrainPotRule`: score > a peaks-over-threshold fit of the train scores (smap_shared.model.threshold, the
  threshold the checkpoints carry).
* `CausalNdtRule`: telemanom's nonparametric dynamic threshold (Hundman et al., KDD 2018) made causal, on
  the absolute error of one column (by default column 0, the telemetry value the labels refer to; the
  other columns are command flags). The error is smoothed by an exponentially weighted mean. Every
  `stride` steps epsilon is re-chosen from the last `window` smoothed errors, all strictly in the past, as
  telemanom chooses it: mean + z * sd, z in [2.5, 12), maximising the relative drop of mean and sd over
  (flagged points + flagged sequences^2), flagged points widened by the error buffer. A step alarms when its
  smoothed error is above epsilon and above the window's largest value under epsilon divided by
  (1 - prune) (telemanom's pruning of minor peaks, made causal); the alarm then holds for `hold` steps (the
  causal half of telemanom's error buffer). The window starts filled with the tail of the train split's
  smoothed errors, so nothing of the test split is needed to start. Options: `warmup` silences a stream's
  first steps (telemanom never scores its first 250 rows), `cap_flagged` enters an alarming value into the
  window at the threshold's height (so a long anomaly does not raise the threshold over itself), and
  `or_margin` also alarms whenever the smoothed error exceeds `or_margin` times the largest smoothed error
  of the train split (a level never seen in training, which the relative rule adapts to and forgets).
  `persist` makes the relative alarm wait for that many consecutive exceedances (brief excursions of the
  error are the main source of false alarms), and `step_factor` adds an alarm on the raw telemetry value:
  a step |x[t] - x[t-1]| larger than `step_factor` times the largest step of the train split (a jump the
  model's smoothed error reacts to late or not at all). `quiet_window` adds an alarm when the raw value goes
  quieter than it ever was in training: its standard deviation over the last `quiet_window` steps falls below
  the train split's lowest such value by more than `quiet_pad` of the train split's range of it (a stuck
  sensor, or a signal that stopped oscillating: the model reconstructs a flat line well, so its error drops
  instead of rising). It alarms on entering that condition, then holds like the others. `latch` keeps an
  alarm up past its hold while the smoothed error stays above `latch` times the threshold in force when the
  alarm began (hysteresis: inside a long anomaly the adaptive threshold climbs and would end it early).
  `scale_window` makes both raw-value alarms scale-free: the step is divided by the value's range over the
  last ~`scale_window` steps before it (whole `stride` batches: the current one and those before it, so the
  state keeps two numbers per batch), the rolling std by the range over those steps and the current one,
  and the train split's largest / lowest such ratios (the same causal pass over the train split, after the
  warm-up) replace the values in train units. telemanom scaled each split to [-1, 1] by its own min/max
  and a live feed is not rescaled at all, so only a ratio means the same thing on train, test and a
  stream: the alarms are then unchanged by any a * x + b of the raw value (a > 0; tests check it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from smap_shared.model.threshold import SPEC_FIXED_THRESHOLD, pot_threshold

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


#: Why an alarm is up: the bits of a rule's `cause` (0: no alarm). An alarm reports every cause that fired
#: since it began, so an operator sees why `anomaly_detected` is set even when the signal is under the threshold.
CAUSE_ERROR = 1  # the model's error above the rule's threshold (the causal rule: for `persist` steps)
CAUSE_TRAIN_LEVEL = 2  # the smoothed error above `or_margin` x its largest train value
CAUSE_VALUE_STEP = 4  # the raw value stepped more than ever in training
CAUSE_VALUE_QUIET = 8  # the raw value went quieter than ever in training
ALARM_CAUSES: dict[int, str] = {
    CAUSE_ERROR: "error_above_threshold", CAUSE_TRAIN_LEVEL: "error_above_train_level",
    CAUSE_VALUE_STEP: "value_step", CAUSE_VALUE_QUIET: "value_quiet",
}


def cause_names(bits: int) -> list[str]:
    """The names of the causes in an `alarm_cause` bit set, in bit order."""
    return [name for bit, name in ALARM_CAUSES.items() if bits & bit]


@dataclass(frozen=True)
class RuleRun:
    detected: BoolArray  # (T,)
    threshold: Array  # (T,) threshold in force at each step, in the units of `signal`
    signal: Array  # (T,) the value compared with the threshold
    final_state: Array
    cause: npt.NDArray[np.int64]  # (T,) ALARM_CAUSES bits, 0 where no alarm


class Rule(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def fit(self, train_scores: Array, train_errors: Array, train_raw: Array | None = None) -> Rule:
        """A copy fitted on the train split: scores (T,), per-sensor squared errors (T, n) and, for rules that
        watch the telemetry itself, the raw input rows (T, n)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    def initial_state(self) -> Array:
        return np.zeros(0, dtype=np.float64)

    @abstractmethod
    def step(self, state: Array, score: float, sensor_error: Array, raw: Array | None = None
             ) -> tuple[bool, float, float]:
        """One step: updates `state` in place, returns (detected, threshold, signal). `raw`: the input row
        before normalisation (the rules that do not watch the telemetry itself ignore it)."""

    def cause(self, state: Array, detected: bool) -> int:
        """ALARM_CAUSES bits of the alarm in force after the last `step` (0 when none)."""
        return CAUSE_ERROR if detected else 0

    def run(self, scores: Array, errors: Array, state: Array | None = None, raw: Array | None = None) -> RuleRun:
        st = self.initial_state() if state is None else np.array(state, dtype=np.float64)
        n = len(scores)
        det = np.zeros(n, dtype=bool)
        thr = np.zeros(n)
        sig = np.zeros(n)
        cause = np.zeros(n, dtype=np.int64)
        for t in range(n):
            det[t], thr[t], sig[t] = self.step(st, float(scores[t]), errors[t], None if raw is None else raw[t])
            cause[t] = self.cause(st, bool(det[t]))
        return RuleRun(det, thr, sig, st, cause)


class _StaticScoreRule(Rule):
    """score > a fixed threshold: stateless, so a whole sequence is one vectorised comparison."""

    threshold: float

    def step(self, state: Array, score: float, sensor_error: Array, raw: Array | None = None
             ) -> tuple[bool, float, float]:
        return score > self.threshold, self.threshold, score

    def run(self, scores: Array, errors: Array, state: Array | None = None, raw: Array | None = None) -> RuleRun:
        s = np.asarray(scores, dtype=np.float64)
        det = s > self.threshold
        return RuleRun(det, np.full(s.shape, self.threshold), s, self.initial_state(),
                       np.where(det, CAUSE_ERROR, 0).astype(np.int64))


@dataclass(frozen=True)
class FixedRule(_StaticScoreRule):
    kind: ClassVar[str] = "fixed"
    threshold: float = SPEC_FIXED_THRESHOLD

    def fit(self, train_scores: Array, train_errors: Array, train_raw: Array | None = None) -> FixedRule:
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "threshold": self.threshold}


@dataclass(frozen=True)
class TrainPotRule(_StaticScoreRule):
    kind: ClassVar[str] = "train_pot"
    risk: float = 1e-3
    init_quantile: float = 0.98
    threshold: float = math.inf  # set by fit
    method: str = ""

    def fit(self, train_scores: Array, train_errors: Array, train_raw: Array | None = None) -> TrainPotRule:
        f = pot_threshold(train_scores, risk=self.risk, init_quantile=self.init_quantile)
        return TrainPotRule(self.risk, self.init_quantile, f.value, f.method)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


# State layout of CausalNdtRule: a header, the ring of past smoothed errors, the ring of the last
# `quiet_window` raw values (empty when the quiet alarm is off), then the max and the min of each of the
# last `scale_blocks` - 1 complete batches of raw values (empty unless the raw-value alarms are scale-free).
(_EWMA, _COUNT, _EPS, _NORMAL_MAX, _POS, _FILLED, _HOLD, _SEEN, _RUN, _PREV, _QPOS, _QFILLED, _QON, _CAUSE,
 _ON, _LATCH_REF, _SPOS, _SFILLED, _SCUR_N, _SCUR_HI, _SCUR_LO, _HEADER) = range(22)


@dataclass(frozen=True)
class CausalNdtRule(Rule):
    kind: ClassVar[str] = "causal_ndt"
    # Global hyper-parameters: telemanom's published defaults (batch 70, window 30 batches, smoothing 5% of
    # that, z in [2.5, 12) by 0.5, pruning 0.13, error buffer 100), not chosen on the test labels.
    column: int = 0  # the sensor whose error is watched; -1: the anomaly score (mean over sensors)
    alpha: float = 2.0 / 106.0  # EWMA weight of span 105 = 70 * 30 * 0.05
    window: int = 2100  # 70 * 30
    stride: int = 70
    z_min: float = 2.5
    z_max: float = 12.0
    z_step: float = 0.5
    prune: float = 0.13
    buffer: int = 100  # telemanom's error buffer, used in the epsilon search and as the alarm hold
    hold: int = 100
    max_sequences: int = 5
    warmup: int = 250  # telemanom's l_s: its first prediction needs 250 rows of history
    min_error: float = 0.0  # the threshold never goes below this
    cap_flagged: bool = False
    or_margin: float = 0.0  # 0 disables the train-level alarm
    persist: int = 1  # the relative alarm needs this many consecutive steps above the threshold
    step_factor: float = 0.0  # > 0: also alarm on a raw value step > step_factor x the largest train step
    quiet_window: int = 0  # > 0: also alarm when the raw value's rolling std (this many steps) is below
    quiet_pad: float = 0.25  # ... the train minimum of it minus quiet_pad x the train range of it
    quiet_deadband: bool = False  # a quiet spell lasts until the std is back at the train minimum, not just
    # above the level that raised it (an alarm deadband: a value hovering at the level raises one alarm)
    latch: float = 0.0  # > 0: an alarm stays up past its hold while the signal > latch x the threshold it began at
    scale_window: int = 0  # > 0: step and rolling std relative to the value's range over about this many
    # steps (whole batches of `stride`: the current one and ceil(scale_window / stride) - 1 before it)
    # Fitted per entity from the train split (with scale_window > 0 the three raw-value ones are ratios):
    train_max: float = 0.0  # largest smoothed train error
    train_max_step: float = -1.0  # largest |x[t] - x[t-1]| of the watched raw value; < 0: not fitted / off
    train_quiet_min: float = -1.0  # lowest rolling std of the raw value in train; < 0: not fitted
    train_quiet_max: float = -1.0  # highest
    initial: tuple[float, ...] = field(default=(), repr=False)  # last `window` smoothed train errors

    def signal_of(self, score: float, sensor_error: Array) -> float:
        return math.sqrt(score) if self.column < 0 else math.sqrt(float(sensor_error[self.column]))

    def smoothed(self, scores: Array, errors: Array) -> Array:
        raw = np.sqrt(scores if self.column < 0 else errors[:, self.column])
        out = np.empty_like(raw)
        m = float(raw[0]) if raw.size else 0.0
        for i, v in enumerate(raw):
            m = self.alpha * float(v) + (1.0 - self.alpha) * m
            out[i] = m
        return out

    @property
    def value_column(self) -> int:
        """The raw column whose steps the step alarm watches (the telemetry value, also for column -1)."""
        return max(self.column, 0)

    def fit(self, train_scores: Array, train_errors: Array, train_raw: Array | None = None) -> CausalNdtRule:
        sm = self.smoothed(np.asarray(train_scores), np.asarray(train_errors))
        tail = sm[-self.window :]
        # the train split is scored as a stream from a zero state too: its first `warmup` steps carry the
        # same start-up transient that a stream never alarms on, so they do not set the train level
        settled = sm[self.warmup :] if sm.size > self.warmup else sm
        max_step, q_min, q_max = -1.0, -1.0, -1.0
        if self.step_factor > 0 or self.quiet_window > 0:
            if train_raw is None:
                raise ValueError("the step and quiet alarms are fitted from the train split's raw rows")
            col = np.asarray(train_raw, dtype=np.float64)[:, self.value_column]
            if self.scale_window > 0:
                max_step, q_min, q_max = self._fit_scale_free(col)
            else:
                if self.step_factor > 0:
                    max_step = float(np.abs(np.diff(col)).max()) if col.size > 1 else 0.0
                if self.quiet_window > 0 and col.size >= self.quiet_window:
                    q_min, q_max = quiet_range(col, self.quiet_window)
        return replace(self, initial=tuple(float(x) for x in tail), train_max=float(settled.max()),
                       train_max_step=max_step, train_quiet_min=q_min, train_quiet_max=q_max)

    def _fit_scale_free(self, col: Array) -> tuple[float, float, float]:
        """(largest step ratio, lowest and highest quiet ratio) of the train split after the warm-up, by the
        same causal pass a stream makes. A train split that already stepped out of a flat stretch (ratio
        inf) leaves the step alarm off (-1): no step can be larger."""
        max_step, q_min, q_max = -1.0, -1.0, -1.0
        if self.step_factor > 0:
            r = step_ratio(col, self.scale_blocks, self.stride)[self.warmup :]
            r = r[~np.isnan(r)]
            top = float(r.max()) if r.size else 0.0
            max_step = top if math.isfinite(top) else -1.0
        if self.quiet_window > 0 and col.size >= self.quiet_window:
            q = quiet_ratio(col, self.quiet_window, self.scale_blocks, self.stride)[
                max(self.warmup, self.quiet_window - 1) :]
            q = q[~np.isnan(q)]
            if q.size:
                lo, hi = float(q.min()), float(q.max())
                q_min, q_max = (0.0 if lo <= 1e-9 else lo), hi
        return max_step, q_min, q_max

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def initial_state(self) -> Array:
        st = np.zeros(_HEADER + self.window + max(self.quiet_window, 0) + 2 * max(self.scale_blocks - 1, 0),
                      dtype=np.float64)
        init = np.asarray(self.initial, dtype=np.float64)[-self.window :]
        st[_HEADER : _HEADER + init.size] = init
        st[_FILLED] = init.size
        st[_POS] = init.size % self.window
        st[_EWMA] = init[-1] if init.size else math.nan
        st[_EPS] = math.inf
        st[_NORMAL_MAX] = 0.0
        st[_PREV] = math.nan  # no previous raw value yet: a stream's first step counts as no step
        return st

    def epsilon(self, w: Array) -> tuple[float, float]:
        """telemanom's epsilon search on a window of smoothed errors: (epsilon, largest value below it)."""
        mu, sd = float(w.mean()), float(w.std())
        eps = mu + self.z_max * sd
        if sd <= 0.0 or mu <= 0.0:
            return math.inf, float(w.max()) if w.size else 0.0
        best = -math.inf
        n = w.size
        for z in np.arange(self.z_min, self.z_max, self.z_step):
            cand = mu + z * sd
            above = w >= cand
            if not above.any():
                continue
            # flagged points widened by the error buffer, as telemanom scores a candidate
            idx = np.flatnonzero(above)
            widened = np.zeros(n + 1, dtype=np.int64)
            np.add.at(widened, np.clip(idx - (self.buffer - 1), 0, n), 1)
            np.add.at(widened, np.clip(idx + self.buffer, 0, n), -1)
            flagged = np.cumsum(widened[:n]) > 0
            n_anom = int(flagged.sum())
            edges = np.diff(np.concatenate(([0], flagged.astype(np.int8), [0])))
            n_seq = int(np.sum(edges == 1))
            below = w[~above]
            if below.size == 0:
                continue
            score = ((mu - below.mean()) / mu + (sd - below.std()) / sd) / (n_seq**2 + n_anom)
            if score >= best and n_seq <= self.max_sequences and n_anom < 0.5 * n:
                best, eps = score, cand
        normal = w[w < eps]
        return eps, float(normal.max()) if normal.size else 0.0

    def _window(self, state: Array) -> Array:
        filled = int(state[_FILLED])
        ring = state[_HEADER : _HEADER + self.window]
        if filled < self.window:
            return ring[:filled].copy()
        pos = int(state[_POS])
        return np.concatenate((ring[pos:], ring[:pos]))

    def _step_alarm(self, state: Array, raw: Array | None, past_range: float = math.nan) -> bool:
        """A step of the raw value larger than `step_factor` x any step seen in the train split (a level
        jump the model's smoothed error reacts to late or not at all); scale-free: `past_range` is the
        range of the last `scale_window` values before this one (nan: fewer than two)."""
        if self.step_factor <= 0 or self.train_max_step < 0 or raw is None:
            return False
        v = float(raw[self.value_column])
        prev = float(state[_PREV])
        state[_PREV] = v
        if math.isnan(prev):
            return False
        step = abs(v - prev)
        if self.scale_window > 0:  # the step as a ratio of the range of the values before it
            if math.isnan(past_range):
                return False
            step = step / past_range if past_range > 0 else (math.inf if step > 0 else 0.0)
        return step > self.step_factor * self.train_max_step if self.train_max_step > 0 else step > 0.0

    @property
    def quiet_level(self) -> float:
        """The rolling std below which the value is quieter than training allows (-inf: alarm off)."""
        if self.quiet_window <= 0 or self.train_quiet_min < 0:
            return -math.inf
        return self.train_quiet_min - self.quiet_pad * (self.train_quiet_max - self.train_quiet_min)

    def _quiet_alarm(self, state: Array, raw: Array | None, range_now: float = math.nan) -> bool:
        """Entering "quieter than ever in training": the rolling std of the last `quiet_window` raw values
        drops below `quiet_level` (fires on the entering step only; the hold keeps the alarm up);
        scale-free: the std over `range_now`, the range of the scale window and this value (0 if flat)."""
        level = self.quiet_level
        if level == -math.inf or raw is None:
            return False
        w = self.quiet_window
        base = _HEADER + self.window
        pos = int(state[_QPOS])
        state[base + pos] = float(raw[self.value_column])
        state[_QPOS] = (pos + 1) % w
        state[_QFILLED] = min(state[_QFILLED] + 1, w)
        # nothing is quieter than a level <= 0 (a std is >= 0): the std is not even computed then
        sd = float(np.std(state[base : base + w])) if state[_QFILLED] >= w and level > 0 else math.inf
        if self.scale_window > 0 and sd < math.inf:
            sd = sd / range_now if range_now > 0 else 0.0
        # with the deadband, a spell in force ends only back at the train minimum (ISA-18.2's deadband against
        # chattering: a value hovering about the level would raise a new alarm at every dip below it)
        quiet = sd < (self.train_quiet_min if self.quiet_deadband and state[_QON] else level)
        entered = quiet and state[_QON] == 0
        state[_QON] = 1.0 if quiet else 0.0
        return entered

    @property
    def scale_blocks(self) -> int:
        """Batches of `stride` steps the scale-free range spans (the current one and those before it)."""
        return -(-self.scale_window // self.stride) if self.scale_window > 0 else 0

    def _scale(self, state: Array, raw: Array | None) -> tuple[float, float]:
        """Scale-free alarms: the raw value's range before this step (nan: fewer than two values) and with
        this one, over the current `stride`-step batch and the `scale_blocks` - 1 complete ones before it
        (the state keeps each batch's max and min, not its values); this value then joins its batch."""
        if self.scale_window <= 0 or raw is None:
            return math.nan, math.nan
        v = float(raw[self.value_column])
        base = _HEADER + self.window + max(self.quiet_window, 0)
        ring_n = self.scale_blocks - 1
        filled, cur_n = int(state[_SFILLED]), int(state[_SCUR_N])
        his = [float(state[base : base + filled].max())] if filled else []
        los = [float(state[base + ring_n : base + ring_n + filled].min())] if filled else []
        if cur_n:
            his.append(float(state[_SCUR_HI]))
            los.append(float(state[_SCUR_LO]))
        past_range = range_now = math.nan
        if his:
            hi, lo = max(his), min(los)
            past_range = hi - lo if filled or cur_n >= 2 else math.nan
            range_now = max(hi, v) - min(lo, v)
        state[_SCUR_HI] = max(float(state[_SCUR_HI]), v) if cur_n else v
        state[_SCUR_LO] = min(float(state[_SCUR_LO]), v) if cur_n else v
        cur_n += 1
        if cur_n == self.stride:  # the batch is complete: its max and min join the ring
            if ring_n:
                pos = int(state[_SPOS])
                state[base + pos], state[base + ring_n + pos] = state[_SCUR_HI], state[_SCUR_LO]
                state[_SPOS] = (pos + 1) % ring_n
                state[_SFILLED] = min(filled + 1, ring_n)
            cur_n = 0
        state[_SCUR_N] = cur_n
        return past_range, range_now

    def cause(self, state: Array, detected: bool) -> int:
        return int(state[_CAUSE]) if detected else 0

    def step(self, state: Array, score: float, sensor_error: Array, raw: Array | None = None
             ) -> tuple[bool, float, float]:
        x = self.signal_of(score, sensor_error)
        m = x if math.isnan(state[_EWMA]) else self.alpha * x + (1.0 - self.alpha) * state[_EWMA]
        state[_EWMA] = m
        if state[_COUNT] == 0:
            w = self._window(state)
            if w.size >= 2:
                state[_EPS], state[_NORMAL_MAX] = self.epsilon(w)
        relative = max(state[_EPS], state[_NORMAL_MAX] / (1.0 - self.prune), self.min_error)
        threshold = min(relative, self.or_margin * self.train_max) if self.or_margin > 0 else relative
        # the relative alarm must persist; the train-level one (a level never seen in training) fires at once
        state[_RUN] = state[_RUN] + 1 if m > relative else 0
        past_range, range_now = self._scale(state, raw)
        bits = ((CAUSE_ERROR if state[_RUN] >= max(self.persist, 1) else 0)
                | (CAUSE_TRAIN_LEVEL if self.or_margin > 0 and m > self.or_margin * self.train_max else 0)
                | (CAUSE_VALUE_STEP if self._step_alarm(state, raw, past_range) else 0)
                | (CAUSE_VALUE_QUIET if self._quiet_alarm(state, raw, range_now) else 0))
        exceeded = bits != 0 and state[_SEEN] >= self.warmup
        state[_SEEN] += 1
        if exceeded:
            # an alarm still up keeps the causes it had and adds the new ones
            state[_CAUSE] = (int(state[_CAUSE]) | bits) if state[_ON] else bits
            state[_HOLD] = self.hold + 1
        held = state[_HOLD] > 0
        if held:
            state[_HOLD] -= 1
            if not state[_ON]:  # the alarm begins: the threshold it began at is what the latch compares with
                state[_LATCH_REF] = threshold
            detected = True
        else:
            # past the hold, a latched alarm stays up while the signal stays above the threshold it began at
            # (the relative threshold keeps rising inside a long anomaly and would end it early)
            detected = bool(self.latch > 0 and state[_ON] and m > self.latch * state[_LATCH_REF])
        state[_ON] = 1.0 if detected else 0.0
        if not detected:
            state[_CAUSE] = 0
        # the current value joins the window only after it has been judged
        pos = int(state[_POS])
        state[_HEADER + pos] = min(m, relative) if self.cap_flagged else m
        state[_POS] = (pos + 1) % self.window
        state[_FILLED] = min(state[_FILLED] + 1, self.window)
        state[_COUNT] = (state[_COUNT] + 1) % self.stride
        return bool(detected), float(threshold), float(m)


def rolling_std(x: Array, w: int) -> Array:
    """Population std of every full window of w consecutive values (len(x) - w + 1 of them)."""
    from numpy.lib.stride_tricks import sliding_window_view

    out: Array = sliding_window_view(np.asarray(x, dtype=np.float64), w).std(axis=1)
    return out


def past_range(x: Array, blocks: int, block: int, include_current: bool) -> Array:
    """The value's range before each t (and with x[t] if include_current) over the batches of `block`
    steps that CausalNdtRule's scale-free alarms see: t's own batch and the `blocks` - 1 before it, counted
    from the sequence's start; nan where that holds fewer than two values. Whole-array: the running max and
    min inside each batch, and the max and min of the complete batches before it (max, min and one
    subtraction: exactly what the per-step rule computes).

    >>> past_range(np.array([0.0, 4.0, 1.0, 2.0, 9.0]), 2, 2, include_current=False).tolist()
    [nan, nan, 4.0, 4.0, 1.0]
    >>> past_range(np.array([0.0, 4.0, 1.0, 2.0, 9.0]), 2, 2, include_current=True).tolist()
    [nan, 4.0, 4.0, 4.0, 8.0]
    """
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.asarray(x, dtype=np.float64)
    n = x.size
    out = np.full(n, np.nan)
    if n == 0:
        return out
    nb = -(-n // block)
    grid = np.full(nb * block, np.nan)
    grid[:n] = x
    grid = grid.reshape(nb, block)
    full_hi, full_lo = np.fmax.accumulate(grid, axis=1), np.fmin.accumulate(grid, axis=1)  # nan-padded tail
    if include_current:
        run_hi, run_lo = full_hi, full_lo
    else:  # up to, not with, each step: shifted by one inside its batch
        gap = np.full((nb, 1), np.nan)
        run_hi = np.concatenate((gap, full_hi[:, :-1]), axis=1)
        run_lo = np.concatenate((gap, full_lo[:, :-1]), axis=1)
    k = blocks - 1  # complete batches before the current one
    if k > 0:
        pad = np.full(k, np.nan)
        prev_hi = np.fmax.reduce(sliding_window_view(np.concatenate((pad, full_hi[:, -1])), k)[:nb], axis=1)
        prev_lo = np.fmin.reduce(sliding_window_view(np.concatenate((pad, full_lo[:, -1])), k)[:nb], axis=1)
        run_hi, run_lo = np.fmax(run_hi, prev_hi[:, None]), np.fmin(run_lo, prev_lo[:, None])
    t = np.arange(n)
    count = t - np.maximum(0, (t // block - blocks + 1) * block) + (1 if include_current else 0)
    ok = count >= 2
    out[ok] = run_hi.reshape(-1)[:n][ok] - run_lo.reshape(-1)[:n][ok]
    return out


def step_ratio(x: Array, blocks: int, block: int) -> Array:
    """|x[t] - x[t-1]| over the value's range before t (`past_range`; the scale-free step alarm's measure):
    inf for a step out of a flat stretch, nan where undefined (a sequence's first two steps).

    >>> x = np.array([0.0, 1.0, 0.0, 3.0])
    >>> step_ratio(x, 2, 2).tolist()
    [nan, nan, 1.0, 3.0]
    >>> step_ratio(5 * x - 2, 2, 2).tolist()  # the same in any units
    [nan, nan, 1.0, 3.0]
    """
    x = np.asarray(x, dtype=np.float64)
    st = np.abs(np.diff(x, prepend=np.nan))
    rng = past_range(x, blocks, block, include_current=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        r: Array = np.where(rng > 0, st / rng, np.where(st > 0, np.inf, 0.0))
    r[np.isnan(rng) | np.isnan(st)] = np.nan
    return r


def quiet_ratio(x: Array, qw: int, blocks: int, block: int) -> Array:
    """Rolling std of the last qw values over the value's range with the current one (`past_range`; the
    scale-free quiet alarm's measure): 0 where that range is 0, nan until qw values are in."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.size, np.nan)
    if x.size < qw:
        return out
    sd = rolling_std(x, qw)
    rng = past_range(x, blocks, block, include_current=True)[qw - 1 :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[qw - 1 :] = np.where(rng > 0, sd / rng, 0.0)
    return out


def quiet_range(train_values: Array, w: int) -> tuple[float, float]:
    """(lowest, highest) rolling std over w steps of a train value. A lowest one at rounding-noise level (a
    value that was flat at times: the std of equal floats can come out as 1e-16 instead of 0) counts as 0,
    so that a flat stretch in a stream, whose std may round the other way, is never quieter than training."""
    x = np.asarray(train_values, dtype=np.float64)
    stds = rolling_std(x, w)
    lo, hi = float(stds.min()), float(stds.max())
    noise = 1e-9 * max(float(np.abs(x).max()), 1e-300)
    return (0.0 if lo <= noise else lo), (0.0 if hi <= noise else hi)


#: The deployed rules in the order they were deployed, each its predecessor plus the options the report
#: describes; the earlier ones stay in the evaluation for comparison.
HYBRID_RULE = CausalNdtRule(cap_flagged=True, or_margin=2.0)
STEP_RULE = replace(HYBRID_RULE, persist=30, step_factor=1.5)
QUIET_RULE = replace(STEP_RULE, quiet_window=50, quiet_pad=0.25)
LATCH_RULE = replace(QUIET_RULE, latch=1.0)
#: Deployed until causal_ndt_deadband replaced it: the latch rule with both raw-value alarms scale-free over
#: 700 steps, a step over 2 x the train split's largest step ratio and a quiet pad of 0.15.
SCALE_FREE_RULE = replace(LATCH_RULE, scale_window=700, step_factor=2.0, quiet_pad=0.15)
#: Deployed until causal_ndt_nested replaced it: SCALE_FREE_RULE with the quiet alarm's deadband.
DEADBAND_RULE = replace(SCALE_FREE_RULE, quiet_deadband=True)
#: The rule the deployed models use: the variant the selection procedure picks with every family
#: (smap_shared.evaluation.selection.choose over GRID; the report's "How the deployed rule was chosen"): its
#: rule `marginal` sets each option to its value best on average over the others, which gives DEADBAND_RULE
#: with the scale-free alarms' range over 2,100 steps (telemanom's error window) instead of 700.
DEPLOYED_RULE_NAME = "causal_ndt_nested"
DEPLOYED_RULE = replace(DEADBAND_RULE, scale_window=2100)
#: Parameters a rule's `fit` sets from the train split (the others are its settings).
FITTED_RULE_FIELDS = frozenset({"train_max", "train_max_step", "train_quiet_min", "train_quiet_max", "initial",
                                "threshold", "method"})

RULE_KINDS: dict[str, type[Rule]] = {r.kind: r for r in (FixedRule, TrainPotRule, CausalNdtRule)}


def rule_from_dict(d: dict[str, Any]) -> Rule:
    params = dict(d)
    cls = RULE_KINDS[params.pop("kind")]
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(params) - names
    if unknown:
        raise ValueError(f"unknown parameters for rule {cls.kind}: {sorted(unknown)}")
    if "initial" in params:
        params["initial"] = tuple(float(x) for x in params["initial"])
    return cls(**params)


class RuleStream:
    """One stream's rule and memory: `update(score, sensor_error) -> (detected, threshold)`."""

    def __init__(self, rule: Rule, state: Array | None = None) -> None:
        self.rule = rule
        self.state = rule.initial_state() if state is None else np.array(state, dtype=np.float64)

    def update(self, score: float, sensor_error: Array, raw: Array | None = None) -> tuple[bool, float]:
        detected, threshold, _ = self.rule.step(self.state, score, sensor_error, raw)
        return detected, threshold
