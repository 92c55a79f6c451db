"""Exploration (issue 7): causal decision rules on cached per-channel errors, against the deployed rule.

    python -m research.explore_rules --prepare   # score + trace all 54 channels once (cached)
    python -m research.explore_rules             # evaluate the candidate rules, print a table

Everything a rule uses is fitted on the train split; decisions at t use values up to t; the test labels
only score. `--prepare` goes through the evaluation's own path (score_channel with the checkpoints, the
deployed CausalNdtRule run step by step) and stores, per channel, the deployed rule's smoothed signal and
its relative (telemanom) threshold, so that every candidate below is a cheap vectorised pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.evaluation.metrics import ChannelMetrics, aggregate, count_metrics
from smap_shared.evaluation.selection import cross_validate
from smap_shared.evaluation.vectorised import hold, onset, persist

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ROOT = Path("/tmp/explore")  # scratch: caches and traces, nothing committed
TRACES = ROOT / "traces"


# ----------------------------------------------------------------------------------------------- prepare
def prepare(channels: Sequence[str] | None, ckpt_dir: Path, cache: Path) -> None:
    from smap_shared.data import default_source
    from smap_shared.evaluation.scoring import score_channel
    from smap_shared.model.rules import HYBRID_RULE

    src = default_source(None)
    TRACES.mkdir(parents=True, exist_ok=True)
    for ch in channels or src.channels():
        out_path = TRACES / f"{ch}.npz"
        if out_path.exists():
            continue
        data = src.load(ch)
        sc = score_channel(ckpt_dir / f"{ch}.ckpt", data, cache)
        tr_s, tr_e, te_s, te_e = sc.train.score, sc.train.sensor_error, sc.test.score, sc.test.sensor_error
        dep = HYBRID_RULE.fit(tr_s, tr_e)
        dep_run = dep.run(te_s, te_e)
        # the relative threshold alone (cap_flagged enters values capped at it, independent of or_margin)
        rel_cap = replace(dep, or_margin=0.0).run(te_s, te_e)
        rel_nocap = replace(dep, or_margin=0.0, cap_flagged=False).run(te_s, te_e)
        assert np.array_equal(rel_cap.signal, dep_run.signal)
        np.savez(
            out_path,
            train_x=data.train[:, 0], test_x=data.test[:, 0],
            train_cmd=data.train[:, 1:], test_cmd=data.test[:, 1:],
            train_err=tr_e[:, 0], test_err=te_e[:, 0], train_score=tr_s, test_score=te_s,
            train_sm=dep.smoothed(tr_s, tr_e), m=dep_run.signal, rel_cap=rel_cap.threshold,
            rel_nocap=rel_nocap.threshold, det_deployed=dep_run.detected,
            train_max=np.array(dep.train_max), segments=np.array(sc.segments, dtype=np.int64).reshape(-1, 2),
        )
        print(ch, "traced", flush=True)


# -------------------------------------------------------------------------------------------- candidates
@dataclass
class Ch:
    name: str
    d: dict[str, Array]

    def __getattr__(self, k: str) -> Array:
        return self.d[k]

    @property
    def segs(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.d["segments"]]


def load_all() -> list[Ch]:
    from smap_shared.data.loader import channel_sort_key

    files = sorted(TRACES.glob("*.npz"), key=lambda p: channel_sort_key(p.stem))
    out = []
    for f in files:
        with np.load(f) as z:
            out.append(Ch(f.stem, {k: z[k] for k in z.files}))
    return out


WARMUP = 250
HOLD = 100


def ewma(x: Array, alpha: float, start: float) -> Array:
    out = np.empty_like(x)
    m = start
    for i, v in enumerate(x):
        m = alpha * v + (1 - alpha) * m
        out[i] = m
    return out


ALPHA = 2.0 / 106.0


def settled(a: Array) -> Array:
    return a[WARMUP:] if a.size > WARMUP else a


# Exceedance components; each returns the raw exceedance mask (before warm-up and hold) -----------------
def ex_relative(c: Ch, cap: bool = True) -> BoolArray:
    return c.m > (c.rel_cap if cap else c.rel_nocap)


def ex_train_level(c: Ch, margin: float) -> BoolArray:
    return c.m > margin * float(c.train_max)


def ex_value_range(c: Ch, frac: float) -> BoolArray:
    """Telemetry value outside the train split's range, widened by `frac` of that range."""
    lo, hi = float(c.train_x.min()), float(c.train_x.max())
    pad = frac * max(hi - lo, 1e-9)
    return (c.test_x < lo - pad) | (c.test_x > hi + pad)


def ex_step(c: Ch, factor: float) -> BoolArray:
    """Step |x_t - x_{t-1}| larger than `factor` x the largest step of the train split."""
    tr = np.abs(np.diff(c.train_x))
    mx = float(tr.max()) if tr.size else 0.0
    st = np.abs(np.diff(c.test_x, prepend=c.test_x[0]))
    out: BoolArray = st > factor * mx if mx > 0 else st > 0
    return out


def ex_unseen_value(c: Ch, tol: float, max_levels: int = 50) -> BoolArray:
    """For quasi-discrete channels (<= max_levels distinct train values): a value farther than tol from all
    of them."""
    levels = np.unique(np.round(c.train_x, 6))
    if levels.size > max_levels:
        return np.zeros(c.test_x.size, dtype=bool)
    d = np.min(np.abs(c.test_x[:, None] - levels[None, :]), axis=1)
    out: BoolArray = d > tol
    return out


def ex_raw_level(c: Ch, margin: float) -> BoolArray:
    """Unsmoothed |error| above margin x its train max (after warm-up)."""
    tr = np.sqrt(settled(c.train_err))
    return np.sqrt(c.test_err) > margin * float(tr.max())


def ex_score_level(c: Ch, margin: float) -> BoolArray:
    """Smoothed anomaly score (all columns) above margin x its train max."""
    tr = ewma(np.sqrt(c.train_score), ALPHA, float(np.sqrt(c.train_score[0])))
    te = ewma(np.sqrt(c.test_score), ALPHA, float(tr[-1]))
    return te > margin * float(settled(tr).max())


def ex_train_quantile_level(c: Ch, q: float, margin: float) -> BoolArray:
    """Smoothed error above margin x a train quantile (per-channel scale, less driven by one train spike)."""
    return c.m > margin * float(np.quantile(settled(c.train_sm), q))


def _run_length(x: Array, tol: float) -> tuple[npt.NDArray[np.int64], BoolArray]:
    """Steps since the value last changed by more than tol, and where it changed."""
    ch = np.abs(np.diff(x, prepend=x[0])) > tol
    ch[0] = True
    idx = np.arange(x.size)
    return idx - np.maximum.accumulate(np.where(ch, idx, 0)), ch


def ex_dwell(c: Ch, factor: float, tol: float = 1e-6, max_change_rate: float = 0.5) -> BoolArray:
    """Value unchanged for longer than factor x the longest constant run of the train split (channels that
    change in at most half their train steps)."""
    rl_tr, ch_tr = _run_length(c.train_x, tol)
    if ch_tr.mean() > max_change_rate:
        return np.zeros(c.test_x.size, dtype=bool)
    out: BoolArray = _run_length(c.test_x, tol)[0] > factor * rl_tr.max()
    return out


def _rolling(x: Array, w: int) -> tuple[Array, Array]:
    cs = np.concatenate(([0.0], np.cumsum(x)))
    cs2 = np.concatenate(([0.0], np.cumsum(x * x)))
    i = np.arange(x.size)
    lo = np.maximum(i + 1 - w, 0)
    n = i + 1 - lo
    mu = (cs[i + 1] - cs[lo]) / n
    return mu, np.sqrt(np.maximum((cs2[i + 1] - cs2[lo]) / n - mu * mu, 0.0))


def ex_rolling_std(c: Ch, w: int, pad: float) -> BoolArray:
    """Rolling std of the value (last w steps) outside the train split's range of it, widened by pad."""
    tr = _rolling(c.train_x, w)[1][w:]
    te = _rolling(c.test_x, w)[1]
    lo, hi = float(tr.min()), float(tr.max())
    p = pad * max(hi - lo, 1e-9)
    out = (te < lo - p) | (te > hi + p)
    out[:w] = False
    return out


def ex_quiet(c: Ch, w: int, pad: float) -> BoolArray:
    """Rolling std of the value (last w steps) below the train split's lowest one by more than pad x the
    train range of it: quieter than ever in training (CausalNdtRule's quiet alarm before its onset)."""
    from smap_shared.model.rules import quiet_range, rolling_std

    lo, hi = quiet_range(c.train_x, w)
    out = np.zeros(c.test_x.size, dtype=bool)
    if c.test_x.size >= w:
        out[w - 1 :] = rolling_std(c.test_x, w) < lo - pad * (hi - lo)
    return out


def finish(c: Ch, exceed: BoolArray, h: int = HOLD, k: int = 1) -> BoolArray:
    e = persist(exceed, k).copy()
    e[:WARMUP] = False
    return hold(e, h)


Rule = Callable[[Ch], BoolArray]


def deployed(c: Ch, margin: float = 2.0, h: int = HOLD, k: int = 1, cap: bool = True) -> BoolArray:
    thr = np.minimum(c.rel_cap if cap else c.rel_nocap, margin * float(c.train_max)) if margin > 0 else (
        c.rel_cap if cap else c.rel_nocap)
    return finish(c, c.m > thr, h, k)


def composite(c: Ch, k_rel: int = 1, margin: float = 2.0, k_or: int = 1, step_b: float = 0.0,
              h_step: int = HOLD, raw_m: float = 0.0, h: int = HOLD, quiet_w: int = 0,
              quiet_pad: float = 0.25) -> BoolArray:
    """Deployed rule with its two alarms debounced separately, OR a train-unseen step / raw error level.

    k_rel: the relative (telemanom) exceedance must hold k_rel consecutive steps; k_or: same for the
    train-level exceedance (margin x train max of the smoothed error); step_b > 0: |x_t - x_{t-1}| above
    step_b x the train split's largest step, held h_step; raw_m > 0: unsmoothed |error| above raw_m x its
    train max (after warm-up); quiet_w > 0: entering a rolling std below the train range (ex_quiet)."""
    rel = persist(c.m > c.rel_cap, k_rel)
    lvl = persist(c.m > margin * float(c.train_max), k_or) if margin > 0 else np.zeros(c.m.size, dtype=bool)
    out = finish(c, rel | lvl, h)
    if step_b > 0:
        out |= finish(c, ex_step(c, step_b), h_step)
    if raw_m > 0:
        out |= finish(c, ex_raw_level(c, raw_m), h)
    if quiet_w > 0:
        out |= finish(c, onset(ex_quiet(c, quiet_w, quiet_pad)), h)
    return out


def latched(c: Ch, base: BoolArray, lam: float, margin: float = 2.0, max_len: int = 10**9) -> BoolArray:
    """Hysteresis: once an alarm of `base` starts, it stays on while the smoothed error is above lam x the
    threshold in force when it started (the relative threshold keeps adapting upwards inside a long
    anomaly; this keeps the alarm up for as long as the error stays at the level that raised it)."""
    thr = np.minimum(c.rel_cap, margin * float(c.train_max))
    out = base.copy()
    on, ref, since = False, 0.0, 0
    m = c.m
    for t in range(m.size):
        if base[t]:
            if not on:
                ref, since = float(thr[t]), t
            on = True
        elif on and m[t] > lam * ref and t - since < max_len:
            out[t] = True
        else:
            on = False
    return out


# ------------------------------------------------------------------ the proposal as the deployed Rule runs it
def verify_reference(ckpt_dir: Path, cache: Path, k_rel: int, step_factor: float, quiet_w: int = 0,
                     quiet_pad: float = 0.25, latch: float = 0.0) -> None:
    """The real CausalNdtRule (persist=k_rel, step_factor, quiet_window, quiet_pad), run step by step as a
    stream runs it, equals the vectorised candidate on every channel (fitted from train only)."""
    from smap_shared.data import default_source
    from smap_shared.evaluation.scoring import score_channel
    from smap_shared.model.rules import HYBRID_RULE

    src = default_source(None)
    chans = {c.name: c for c in load_all()}
    total: list[ChannelMetrics] = []
    for ch in src.channels():
        data = src.load(ch)
        sc = score_channel(ckpt_dir / f"{ch}.ckpt", data, cache)
        rule = replace(HYBRID_RULE, persist=k_rel, step_factor=step_factor, quiet_window=quiet_w,
                       quiet_pad=quiet_pad, latch=latch).fit(sc.train.score, sc.train.sensor_error, data.train)
        pred = rule.run(sc.test.score, sc.test.sensor_error, raw=data.test).detected
        vec = composite(chans[ch], k_rel=k_rel, step_b=step_factor, quiet_w=quiet_w, quiet_pad=quiet_pad)
        if latch > 0:
            vec = latched(chans[ch], vec, latch)
        assert np.array_equal(pred, vec), ch
        total.append(light_metrics(pred, chans[ch]))
    print(f"reference k_rel={k_rel} step={step_factor:g} quiet={quiet_w}/{quiet_pad:g} latch={latch:g}: "
          f"step-by-step == "
          f"vectorised on all channels; {fmt(aggregate(total))}")


# ---------------------------------------------------------------------------------------------- scoring
def light_metrics(pred: BoolArray, c: Ch) -> ChannelMetrics:
    return count_metrics(pred, c.segs)


def evaluate(rules: Mapping[str, Rule], chans: Sequence[Ch]) -> dict[str, dict[str, ChannelMetrics]]:
    """per channel -> per rule -> metrics."""
    return {c.name: {k: light_metrics(r(c), c) for k, r in rules.items()} for c in chans}


def fmt(m: ChannelMetrics) -> str:
    e, p = m.event, m.point
    return (f"{e.tp:3d}/{e.fp:3d}/{e.fn:3d}  ev F1 {e.f1:.3f}  "
            f"pt P/R/F1 {p.precision:.3f}/{p.recall:.3f}/{p.f1:.3f}")


def table(per: Mapping[str, Mapping[str, ChannelMetrics]], title: str) -> dict[str, ChannelMetrics]:
    names = list(next(iter(per.values())))
    agg = {k: aggregate([per[c][k] for c in per]) for k in names}
    print(f"\n## {title}")
    for k in names:
        print(f"{k:58s} {fmt(agg[k])}")
    return agg


def cv(per: Mapping[str, Mapping[str, ChannelMetrics]], title: str) -> None:
    folds, held = cross_validate(per)
    print(f"   CV[{title}] held-out: {fmt(held)}; selected: {[f.selected for f in folds]}")


def _f1(tp: npt.NDArray[np.int64], fp: npt.NDArray[np.int64], fn: npt.NDArray[np.int64]) -> Array:
    p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def robust_cv(per: Mapping[str, Mapping[str, ChannelMetrics]], title: str, n_splits: int = 1000) -> None:
    """Random 2-fold cross-channel selections (objective of selection.py) and leave-one-channel-out."""
    chans = list(per)
    names = list(per[chans[0]])
    # counts[channel, variant, 6]: event tp/fp/fn, point tp/fp/fn
    cnt = np.array([[[per[c][k].event.tp, per[c][k].event.fp, per[c][k].event.fn,
                      per[c][k].point.tp, per[c][k].point.fp, per[c][k].point.fn] for k in names] for c in chans])

    def pick(mask: BoolArray) -> int:
        s = cnt[mask].sum(axis=0)
        return int(np.argmax(_f1(s[:, 0], s[:, 1], s[:, 2]) + _f1(s[:, 3], s[:, 4], s[:, 5])))

    rng = np.random.default_rng(0)
    ev, pt = [], []
    for _ in range(n_splits):
        half = np.zeros(len(chans), dtype=bool)
        half[rng.permutation(len(chans))[: len(chans) // 2]] = True
        held = cnt[~half, pick(half)].sum(axis=0) + cnt[half, pick(~half)].sum(axis=0)
        ev.append(float(_f1(held[0], held[1], held[2])))
        pt.append(float(_f1(held[3], held[4], held[5])))
    loo = sum(cnt[i, pick(np.arange(len(chans)) != i)] for i in range(len(chans)))
    print(f"   robust CV[{title}] random 2-fold x{n_splits}: event F1 mean {np.mean(ev):.3f} "
          f"(10-90%: {np.quantile(ev, 0.1):.3f}-{np.quantile(ev, 0.9):.3f}), point F1 mean {np.mean(pt):.3f} "
          f"({np.quantile(pt, 0.1):.3f}-{np.quantile(pt, 0.9):.3f}); leave-one-channel-out: "
          f"{loo[0]}/{loo[1]}/{loo[2]} event F1 {float(_f1(loo[0], loo[1], loo[2])):.3f}, "
          f"point F1 {float(_f1(loo[3], loo[4], loo[5])):.3f}")


def _recorded(c: Ch) -> BoolArray:
    return c.det_deployed.astype(bool)


def _plus(c: Ch, extra: Callable[[Ch], BoolArray], h_extra: int = HOLD, k_extra: int = 1) -> BoolArray:
    """Deployed rule OR an extra raw-telemetry alarm (own debounce and hold)."""
    return deployed(c) | finish(c, extra(c), h_extra, k_extra)


def _onset_of(c: Ch, extra: Callable[[Ch], BoolArray]) -> BoolArray:
    return onset(extra(c))


def _latched_deployed(c: Ch, lam: float) -> BoolArray:
    return latched(c, deployed(c), lam)


def _latched_composite(c: Ch, lam: float, k_rel: int, step_b: float = 1.5, max_len: int = 10**9) -> BoolArray:
    return latched(c, composite(c, k_rel=k_rel, step_b=step_b), lam, max_len=max_len)


def _latched_quiet(c: Ch, lam: float) -> BoolArray:
    return latched(c, composite(c, k_rel=30, step_b=1.5, quiet_w=50, quiet_pad=0.25), lam)


def families() -> dict[str, dict[str, Rule]]:
    P = partial
    fam: dict[str, dict[str, Rule]] = {}
    fam["baseline"] = {
        "deployed (step-by-step run)": _recorded,
        "deployed (vectorised)": deployed,
        "causal_ndt (no cap, no or)": P(deployed, margin=0.0, cap=False),
    }
    fam["report GRID (how the deployed rule was chosen), vectorised"] = {
        f"cap={int(cp)},or={o:g},hold={h}": P(deployed, margin=o, h=h, cap=cp)
        for cp in (False, True) for o in (0.0, 1.5, 2.0, 3.0, 4.0) for h in (100, 250)
    }
    fam["debounce k (deployed + need k consecutive)"] = {
        f"k={k},h={h}": P(deployed, h=h, k=k) for k in (1, 3, 10, 30) for h in (100, 250)
    }
    fam["or_margin finer"] = {f"or={o:g}": P(deployed, margin=o) for o in (1.6, 1.8, 2.0, 2.2, 2.5)}
    fam["+ value outside train range"] = {
        "deployed": deployed,
        **{f"+range pad={f:g} k={k}": P(_plus, extra=P(ex_value_range, frac=f), k_extra=k)
           for f in (0.0, 0.05, 0.1, 0.25) for k in (1, 10)},
    }
    fam["+ step never seen in train"] = {
        "deployed": deployed,
        **{f"+step x{b:g}": P(_plus, extra=P(ex_step, factor=b)) for b in (1.0, 1.25, 1.5, 2.0, 3.0)},
    }
    fam["+ unseen discrete level"] = {
        "deployed": deployed,
        **{f"+unseen tol={t:g} lv<={lv} k={k}": P(_plus, extra=P(ex_unseen_value, tol=t, max_levels=lv), k_extra=k)
           for t in (0.01, 0.05) for lv in (10, 50) for k in (1, 10)},
    }
    fam["+ raw |error| level"] = {
        "deployed": deployed,
        **{f"+raw x{m:g} k={k}": P(_plus, extra=P(ex_raw_level, margin=m), k_extra=k)
           for m in (1.5, 2.0, 3.0) for k in (1, 5)},
    }
    fam["+ smoothed anomaly score level"] = {
        "deployed": deployed,
        **{f"+score x{m:g}": P(_plus, extra=P(ex_score_level, margin=m)) for m in (1.5, 2.0, 3.0)},
    }
    fam["+ value unchanged longer than in train (onset)"] = {
        "deployed": deployed,
        **{f"+dwell>{f:g}x onset": P(_plus, extra=P(_onset_of, extra=P(ex_dwell, factor=f)))
           for f in (1.25, 1.5, 2.0)},
    }
    fam["+ rolling std outside train range (onset)"] = {
        "deployed": deployed,
        **{f"+rollstd w={w} pad={p:g} onset": P(_plus, extra=P(_onset_of, extra=P(ex_rolling_std, w=w, pad=p)))
           for w in (20, 50, 100) for p in (0.1, 0.25, 0.5)},
    }
    fam["step 1.5 + relative part debounced k"] = {
        f"step=1.5,krel={k}": P(composite, k_rel=k, step_b=1.5) for k in (1, 2, 3, 5, 7, 10, 15, 20, 30, 50)
    }
    fam["step factor x relative debounce"] = {
        f"step={b:g},krel={k}": P(composite, k_rel=k, step_b=b)
        for b in (0.0, 1.25, 1.5, 2.0, 3.0) for k in (1, 5, 10, 20, 30, 50)
    }
    fam["latch (hysteresis) on deployed"] = {
        f"latch lam={lam:g}": P(_latched_deployed, lam=lam) for lam in (1e9, 1.2, 1.0, 0.9, 0.8)
    }
    fam["step 1.5 + krel + latch"] = {
        f"step=1.5,krel={k},latch={lam:g}": P(_latched_composite, lam=lam, k_rel=k)
        for k in (1, 10, 30) for lam in (1e9, 1.2, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8)
    }
    fam["step 1.5 + krel 30 + bounded latch"] = {
        f"step=1.5,krel=30,latch={lam:g},max={n}": P(_latched_composite, lam=lam, k_rel=30, max_len=n)
        for lam in (1.0, 0.9) for n in (250, 500, 1000, 2000, 4000)
    }
    fam["step 1.5 + krel 30 + quiet (rolling std below train)"] = {
        f"step=1.5,krel=30,quiet={w}/{q:g}": P(composite, k_rel=30, step_b=1.5, quiet_w=w, quiet_pad=q)
        for w in (0, 20, 50, 100, 250) for q in (0.15, 0.25, 0.35, 0.5)
        if not (w == 0 and q != 0.25)
    }
    fam["quiet + latch (hysteresis)"] = {
        f"quiet=50/0.25,latch={lam:g}": P(_latched_quiet, lam=lam) for lam in (1e9, 1.2, 1.1, 1.0, 0.95, 0.9, 0.85)
    }
    fam["composite"] = {
        f"krel={kr},kor={ko},step={sb:g},hstep={hs},raw={rm:g},h={h}":
            P(composite, k_rel=kr, k_or=ko, step_b=sb, h_step=hs, raw_m=rm, h=h)
        for kr in (1, 3, 5, 10, 20) for ko in (1, 10) for sb in (0.0, 1.25, 1.5, 2.0) for hs in (25, 100)
        for rm in (0.0, 1.5) for h in (100, 250)
        if not (sb == 0 and hs == 25)
    }
    return fam


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))  # as the evaluation command
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    ap.add_argument("--family", nargs="*", default=None)
    ap.add_argument("--verify", nargs="+", metavar="K_REL STEP [QUIET_W QUIET_PAD [LATCH]]", default=None,
                    help="check the step-by-step reference of the proposal against the vectorised one")
    args = ap.parse_args()
    if args.verify:
        v = args.verify
        verify_reference(args.checkpoints, args.cache, int(v[0]), float(v[1]),
                         int(v[2]) if len(v) > 2 else 0, float(v[3]) if len(v) > 3 else 0.25,
                         float(v[4]) if len(v) > 4 else 0.0)
        return
    if args.prepare:
        prepare(None, args.checkpoints, args.cache)
        return
    chans = load_all()
    print(f"{len(chans)} channels, {sum(len(c.segs) for c in chans)} events")
    union: dict[str, dict[str, ChannelMetrics]] = {c.name: {} for c in chans}
    for name, rules in families().items():
        if args.family and not any(f in name for f in args.family):
            continue
        per = evaluate(rules, chans)
        if name != "baseline" and not name.startswith("report GRID"):
            for c in per:
                union[c].update({f"{name}: {k}": v for k, v in per[c].items()})
        if name == "composite":
            agg = {k: aggregate([per[c][k] for c in per]) for k in rules}
            top = sorted(agg, key=lambda k: -(agg[k].event.f1 + agg[k].point.f1))[:25]
            print("\n## composite: top 25 of", len(agg), "by event F1 + point F1 (in-sample)")
            for k in top:
                print(f"{k:58s} {fmt(agg[k])}")
            cv(per, name)
            robust_cv(per, name)
            continue
        table(per, name)
        if name != "baseline":
            cv(per, name)
            robust_cv(per, name)
    if not args.family:
        print(f"\nunion of every variant tried ({len(next(iter(union.values())))}), selection as in selection.py:")
        cv(union, "everything tried")
        robust_cv(union, "everything tried")


if __name__ == "__main__":
    main()
