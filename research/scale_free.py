"""Issue 15: do the raw-value alarms depend on how each split was scaled, and what scale-free form holds?

    python -m research.explore_rules --prepare   # once: the per-channel traces this script reads
    python -m research.scale_free                # tables: rescaling sweep, scale-free variants, LOFO

telemanom pre-scaled each split to [-1, 1] by that split's own min/max, so "1.5 x the largest step of the
train split" (`step_factor`) and "quieter than the train split's lowest rolling std" (`quiet_window`) compare
numbers in two different units. A live feed is not rescaled per split: if the test split had been scaled
like the train split its values would be a * x + b for an unknown a > 0. This script

1. sweeps a (and b) over the test split's raw values with the model's error alarms held fixed (they are the
   model's own matter: it was trained in the train split's units) and shows how the unit-bound alarms move;
2. evaluates dimensionless forms of both alarms, which are invariant to any a * x + b by construction:
   the step and the rolling std are divided by the value's range over the last `scale_window` steps of the
   stream itself (causal, the current value excluded for the step), and compared with the train split's
   largest / lowest such ratio, computed by the same causal pass over the train split;
3. selects among all of them by leave-one-family-out (smap_shared.evaluation.selection), the report's
   protocol, and prints in-sample beside held-out.

Everything is fitted on the train split; decisions at t use values up to t; test labels only score.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from research.explore_rules import (
    HOLD,
    ROOT,
    WARMUP,
    Ch,
    ex_quiet,
    ex_step,
    finish,
    fmt,
    latched,
    load_all,
)
from smap_shared.evaluation.metrics import ChannelMetrics, aggregate, count_metrics
from smap_shared.evaluation.selection import cross_validate
from smap_shared.evaluation.vectorised import onset, persist
from smap_shared.model.rules import CausalNdtRule, quiet_ratio, step_ratio

Array = npt.NDArray[np.float64]
STRIDE = 70  # CausalNdtRule's batch (telemanom's): the scale-free range spans whole batches
BoolArray = npt.NDArray[np.bool_]


def blocks(w: int) -> int:
    """The whole batches a scale window of w steps spans (as CausalNdtRule.scale_blocks counts them)."""
    return CausalNdtRule(stride=STRIDE, scale_window=w).scale_blocks


def ex_step_sf(c: Ch, factor: float, w: int) -> BoolArray:
    """Scale-free step: its ratio above `factor` x the train split's largest ratio (after the warm-up);
    no alarm when the train split already stepped out of a flat window (ratio inf)."""
    tr = step_ratio(c.train_x, blocks(w), STRIDE)[WARMUP:]
    tr = tr[~np.isnan(tr)]
    mx = float(tr.max()) if tr.size else 0.0
    te = step_ratio(c.test_x, blocks(w), STRIDE)
    if not np.isfinite(mx):
        return np.zeros(te.size, dtype=bool)
    with np.errstate(invalid="ignore"):
        out: BoolArray = np.nan_to_num(te, nan=0.0) > factor * mx if mx > 0 else np.nan_to_num(te, nan=0.0) > 0
    return out


def ex_quiet_sf(c: Ch, qw: int, pad: float, w: int) -> BoolArray:
    """Scale-free quiet: the quiet ratio below the train split's lowest one minus pad x its train range."""
    tr = quiet_ratio(c.train_x, qw, blocks(w), STRIDE)[max(WARMUP, qw - 1):]
    tr = tr[~np.isnan(tr)]
    te = quiet_ratio(c.test_x, qw, blocks(w), STRIDE)
    if tr.size == 0:
        return np.zeros(te.size, dtype=bool)
    lo, hi = float(tr.min()), float(tr.max())
    lo = 0.0 if lo <= 1e-9 else lo
    out: BoolArray = np.nan_to_num(te, nan=np.inf) < lo - pad * (hi - lo)
    return out


def model_part(c: Ch, k_rel: int = 30, margin: float = 2.0) -> BoolArray:
    """The deployed rule's model-error alarms (relative persisted 30, train level 2x), warm-up and hold."""
    rel = persist(c.m > c.rel_cap, k_rel)
    lvl = c.m > margin * float(c.train_max)
    return finish(c, rel | lvl, HOLD)


def rule(c: Ch, step: Callable[[Ch], BoolArray] | None, quiet: Callable[[Ch], BoolArray] | None,
         lam: float = 1.0) -> BoolArray:
    out = model_part(c)
    if step is not None:
        out |= finish(c, step(c), HOLD)
    if quiet is not None:
        out |= finish(c, onset(quiet(c)), HOLD)
    return latched(c, out, lam) if lam > 0 else out


def rescaled(c: Ch, a: float, b: float) -> Ch:
    """The channel with its test split's raw value mapped to a * x + b (the model's traces unchanged)."""
    d = dict(c.d)
    d["test_x"] = a * c.test_x + b
    return Ch(c.name, d)


def variants() -> dict[str, Callable[[Ch], BoolArray]]:
    P = partial
    out: dict[str, Callable[[Ch], BoolArray]] = {
        "model alarms only (+latch)": P(rule, step=None, quiet=None),
        "deployed: unit step 1.5 + unit quiet 50/0.25": P(rule, step=P(ex_step, factor=1.5),
                                                          quiet=P(ex_quiet, w=50, pad=0.25)),
    }
    for w in (250, 700, 2100):
        for f in (1.0, 1.25, 1.5, 2.0):
            out[f"sf step {f:g} w={w} (no quiet)"] = P(rule, step=P(ex_step_sf, factor=f, w=w), quiet=None)
            for pad in (0.15, 0.25, 0.35):
                out[f"sf step {f:g} + sf quiet 50/{pad:g}, w={w}"] = P(
                    rule, step=P(ex_step_sf, factor=f, w=w), quiet=P(ex_quiet_sf, qw=50, pad=pad, w=w))
    return out


def evaluate(rules: Mapping[str, Callable[[Ch], BoolArray]], chans: list[Ch]
             ) -> dict[str, dict[str, ChannelMetrics]]:
    return {c.name: {k: count_metrics(r(c), c.segs) for k, r in rules.items()} for c in chans}


def sweep(chans: list[Ch]) -> None:
    """How each form of the raw-value alarms moves when the test split's units change (a * x + b)."""
    forms: dict[str, Callable[[Ch], BoolArray]] = {
        "unit step 1.5 + unit quiet (causal_ndt_latch)": partial(rule, step=partial(ex_step, factor=1.5),
                                                         quiet=partial(ex_quiet, w=50, pad=0.25)),
        "sf step 2 + sf quiet 0.15, w=700 (deployed now)": partial(
            rule, step=partial(ex_step_sf, factor=2.0, w=700), quiet=partial(ex_quiet_sf, qw=50, pad=0.15, w=700)),
    }
    print("\n## the test split in other units (a * x + b), model alarms fixed")
    for a, b in ((1.0, 0.0), (0.5, 0.0), (0.8, 0.1), (1.25, -0.2), (2.0, 0.0)):
        row = []
        for name, f in forms.items():
            agg = aggregate([count_metrics(f(rescaled(c, a, b)), c.segs) for c in chans])
            row.append(f"{name}: {agg.event.tp}/{agg.event.fp}/{agg.event.fn} ev {agg.event.f1:.3f} "
                       f"pt {agg.point.f1:.3f}")
        print(f"a={a:<5g} b={b:<5g} " + " | ".join(row))


def verify(ckpt_dir: Path, cache: Path, factor: float, w: int, pad: float) -> None:
    """The real CausalNdtRule with `scale_window` (as the deployed models run it, step by step) equals the
    vectorised variant above on every channel, and is unchanged when the test split's raw value is
    rescaled (the model's scores held fixed)."""
    from smap_shared.data import default_source
    from smap_shared.evaluation.scoring import score_channel
    from smap_shared.model.rules import QUIET_RULE

    src = default_source(None)
    chans = {c.name: c for c in load_all()}
    base = replace(QUIET_RULE, latch=1.0, step_factor=factor, quiet_pad=pad, scale_window=w)
    total = []
    for ch in tqdm(src.channels(), desc="step by step", unit="channel"):
        data = src.load(ch)
        sc = score_channel(ckpt_dir / f"{ch}.ckpt", data, cache)
        r = base.fit(sc.train.score, sc.train.sensor_error, data.train)
        pred = r.run(sc.test.score, sc.test.sensor_error, raw=data.test).detected
        vec = rule(chans[ch], step=partial(ex_step_sf, factor=factor, w=w),
                   quiet=partial(ex_quiet_sf, qw=50, pad=pad, w=w))
        assert np.array_equal(pred, vec), ch
        moved = data.test.copy()
        moved[:, 0] = 3.0 * moved[:, 0] - 0.7
        assert np.array_equal(r.run(sc.test.score, sc.test.sensor_error, raw=moved).detected, pred), ch
        total.append(count_metrics(pred, chans[ch].segs))
    print(f"step-by-step == vectorised and unchanged by 3x - 0.7 on all channels: {fmt(aggregate(total))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--verify", nargs=3, metavar=("STEP_FACTOR", "SCALE_WINDOW", "QUIET_PAD"), default=None,
                    help="check the deployed rule's step-by-step form of one variant against this script's")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--cache", type=Path, default=ROOT / "cache")
    args = ap.parse_args()
    if args.verify:
        verify(args.checkpoints, args.cache, float(args.verify[0]), int(args.verify[1]), float(args.verify[2]))
        return
    chans = load_all()
    if not chans:
        raise SystemExit("no traces: run python -m research.explore_rules --prepare first")
    print(f"{len(chans)} channels, {sum(len(c.segs) for c in chans)} events")
    if not args.no_sweep:
        sweep(chans)
    rules = variants()
    per = evaluate(rules, chans)
    print("\n## variants (in-sample, all channels)")
    for k in rules:
        print(f"{k:52s} {fmt(aggregate([per[c][k] for c in per]))}")
    folds, held = cross_validate(per)
    print(f"\nleave-one-family-out over these {len(rules)}: {fmt(held)}")
    for f in folds:
        print(f"  {f.held_out}: {f.selected}")
    sf_only = {c: {k: v for k, v in m.items() if k.startswith("sf ")} for c, m in per.items()}
    folds, held = cross_validate(sf_only)
    print(f"leave-one-family-out over the scale-free ones only: {fmt(held)}")
    for f in folds:
        print(f"  {f.held_out}: {f.selected}")


if __name__ == "__main__":
    main()
