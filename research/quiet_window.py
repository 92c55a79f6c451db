"""Issue 15: the quiet alarm's window (50 steps) was picked by looking at the test events it was built for.
What does leave-one-family-out give when that window is one of the protocol's choices too, and does a
quiet criterion that does not hinge on one window hold up better?

    python -m research.explore_rules --prepare   # once: the per-channel traces this script reads
    python -m research.quiet_window              # tables: the grids below, in-sample and held out

Every variant is the deployed rule's vectorised form (research.scale_free.rule, checked step by step against
CausalNdtRule by `python -m research.scale_free --verify`); the grids are the evaluation's selection grid
(`smap_shared.evaluation.selection.GRID`) with the quiet window fixed at 50 ("as deployed"), chosen from
{20, 50, 100} ("window chosen"), or replaced by the union over those windows ("every window": quieter than
training at any of the three scales, each against its own train reference). Everything is fitted on the
train split; the test labels only score. Which grid to ship is itself a choice made here by looking at
held-out numbers, so the report names how many grids were compared.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import numpy.typing as npt

from research.explore_rules import Ch, composite, deployed, fmt, load_all
from research.scale_free import ex_quiet_sf, ex_step_sf, rule
from smap_shared.evaluation.metrics import ChannelMetrics, aggregate, count_metrics
from smap_shared.evaluation.selection import cross_validate

BoolArray = npt.NDArray[np.bool_]
Variant = Callable[[Ch], BoolArray]
WINDOWS = (20, 50, 100)
PADS = (0.15, 0.25, 0.35)


def quiet_any(c: Ch, windows: tuple[int, ...], pad: float, w: int) -> BoolArray:
    """Quieter than training at any of `windows` (each its own scale-free train reference)."""
    out = np.zeros(c.test_x.size, dtype=bool)
    for qw in windows:
        out |= ex_quiet_sf(c, qw=qw, pad=pad, w=w)
    return out


def base_variants() -> dict[str, Variant]:
    """The selection grid's variants without raw-value alarms (telemanom options, persistence)."""
    out: dict[str, Variant] = {}
    for cap in (False, True):
        for o in (0.0, 1.5, 2.0, 3.0, 4.0):
            for h in (100, 250):
                out[f"cap={int(cap)},or={o:g},hold={h}"] = partial(deployed, margin=o, h=h, cap=cap)
    for p in (10, 30):
        out[f"cap=1,or=2,hold=100,persist={p}"] = partial(composite, k_rel=p)
    return out


def quiet_options(kind: str) -> dict[str, Callable[..., BoolArray] | None]:
    """The quiet alarm's options of a grid, each still to be given the scale window `w`."""
    opts: dict[str, Callable[..., BoolArray] | None] = {"off": None}
    for pad in PADS:
        if kind == "as deployed":
            opts[f"50/{pad:g}"] = partial(ex_quiet_sf, qw=50, pad=pad)
        elif kind == "window chosen":
            for qw in WINDOWS:
                opts[f"{qw}/{pad:g}"] = partial(ex_quiet_sf, qw=qw, pad=pad)
        else:
            opts[f"any/{pad:g}"] = partial(quiet_any, windows=WINDOWS, pad=pad)
    return opts


def grid(kind: str) -> dict[str, Variant]:
    out = base_variants()
    for w in (250, 700, 2100):
        for f in (1.25, 1.5, 2.0):
            for qname, q in quiet_options(kind).items():
                for lam in (0.0, 1.0):
                    quiet = partial(q, w=w) if q is not None else None
                    out[f"sf,scale={w},step={f:g},quiet={qname},latch={lam:g}"] = partial(
                        rule, step=partial(ex_step_sf, factor=f, w=w), quiet=quiet, lam=lam)
    return out


def evaluate(variants: Mapping[str, Variant], chans: list[Ch]) -> dict[str, dict[str, ChannelMetrics]]:
    return {c.name: {k: count_metrics(v(c), c.segs) for k, v in variants.items()} for c in chans}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", nargs="+", default=["as deployed", "window chosen", "every window"])
    args = ap.parse_args()
    chans = load_all()
    if not chans:
        raise SystemExit("no traces: run python -m research.explore_rules --prepare first")
    print(f"{len(chans)} channels, {sum(len(c.segs) for c in chans)} events")
    for kind in args.grids:
        variants = grid(kind)
        per = evaluate(variants, chans)
        in_sample = {k: aggregate([per[c][k] for c in per]) for k in variants}
        best = max(in_sample, key=lambda k: in_sample[k].event.f1 + in_sample[k].point.f1)
        folds, held = cross_validate(per)
        print(f"\n## grid '{kind}' ({len(variants)} variants)")
        print(f"  in-sample best {best}: {fmt(in_sample[best])}")
        print(f"  leave-one-family-out: {fmt(held)}")
        for f in folds:
            ev = aggregate([per[c][f.selected] for c in f.evaluate_on])
            print(f"    {f.held_out}: {f.selected}  -> {ev.event.tp}/{ev.event.fp}/{ev.event.fn}")


if __name__ == "__main__":
    main()
