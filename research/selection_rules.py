"""Issue 15: is the leave-one-family-out headline held back by how the protocol picks a variant?

The evaluation picks the variant with the best event F1 + point-wise F1 on TP/FP/FN summed over the selecting
families (`pooled`). Two other rules, declared before looking at what they give:
- `macro`: the mean over the selecting families of each family's event F1 + point-wise F1 (a variant that
  ruins one family is not outvoted by the others' counts);
- `robust`: the pooled objective in the worst case with one more selecting family left out (a variant whose
  edge rests on one family loses it);
- `marginal`: each option (scale window, step factor, quiet window and pad, latch, ...) set on its own, to
  the value with the best pooled objective averaged over every variant that has it, then the variant with
  those values (the most of them, where the grid has no exact match): less variance than one joint argmax.
And `nested`: for each family held out, the rule itself is chosen by an inner leave-one-family-out over the
other nine, then applied to them; the family left out reaches no choice, the rule's included.

    python -m research.selection_rules [--checkpoints checkpoints] [--cache /tmp/scorecache]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

from smap_shared.evaluation.metrics import ChannelMetrics, aggregate
from smap_shared.evaluation.selection import family

Grid = Mapping[str, Mapping[str, ChannelMetrics]]  # channel -> variant -> metrics
Selector = Callable[[Grid, Sequence[str]], str]  # (grid, selecting families) -> variant


def _objective(per: Grid, channels: Sequence[str], variant: str) -> float:
    a = aggregate([per[c][variant] for c in channels])
    return a.event.f1 + a.point.f1


def _of(per: Grid, families: Sequence[str]) -> list[str]:
    return [c for c in per if family(c) in families]


def _variants(per: Grid) -> list[str]:
    return list(next(iter(per.values())))


def pooled(per: Grid, families: Sequence[str]) -> str:
    chans = _of(per, families)
    return max(_variants(per), key=lambda k: _objective(per, chans, k))


def macro(per: Grid, families: Sequence[str]) -> str:
    groups = {f: _of(per, [f]) for f in families}
    return max(_variants(per), key=lambda k: sum(_objective(per, g, k) for g in groups.values()))


def robust(per: Grid, families: Sequence[str]) -> str:
    def worst(k: str) -> float:
        return min(_objective(per, _of(per, [x for x in families if x != f]), k) for f in families)

    return max(_variants(per), key=worst)


def options(variant: str) -> dict[str, str]:
    """A grid variant's options by name.

    >>> options("cap=1,or=2,hold=100,quiet=50/0.15")
    {'cap': '1', 'or': '2', 'hold': '100', 'quiet': '50/0.15'}
    """
    return dict(part.split("=", 1) for part in variant.split(","))


def marginal(per: Grid, families: Sequence[str]) -> str:
    chans = _of(per, families)
    variants = _variants(per)
    score = {k: _objective(per, chans, k) for k in variants}
    opts = {k: options(k) for k in variants}
    dims = sorted({d for o in opts.values() for d in o})
    chosen: dict[str, str] = {}
    for d in dims:
        by_value: dict[str, list[float]] = {}
        for k, o in opts.items():
            by_value.setdefault(o.get(d, "-"), []).append(score[k])
        chosen[d] = max(by_value, key=lambda v: sum(by_value[v]) / len(by_value[v]))
    return max(variants, key=lambda k: (sum(opts[k].get(d, "-") == v for d, v in chosen.items()), score[k]))


SELECTORS: dict[str, Selector] = {"pooled": pooled, "macro": macro, "robust": robust, "marginal": marginal}


def lofo(per: Grid, families: Sequence[str], select: Selector) -> tuple[ChannelMetrics, dict[str, str]]:
    """Each family scored with the variant `select` picks on the others; counts summed."""
    held: list[ChannelMetrics] = []
    picks: dict[str, str] = {}
    for f in families:
        picks[f] = select(per, [x for x in families if x != f])
        held += [per[c][picks[f]] for c in _of(per, [f])]
    return aggregate(held), picks


def nested(per: Grid, families: Sequence[str], selectors: Mapping[str, Selector] = SELECTORS
           ) -> tuple[ChannelMetrics, dict[str, str]]:
    """Leave-one-family-out where the selection rule is chosen inside too (inner LOFO on the other families);
    returns the held-out metrics and, per family left out, the rule chosen for it."""
    held: list[ChannelMetrics] = []
    rules: dict[str, str] = {}
    for f in families:
        inner = [x for x in families if x != f]
        score = {}
        for name, sel in selectors.items():
            a, _ = lofo(per, inner, sel)
            score[name] = a.event.f1 + a.point.f1
        rules[f] = max(selectors, key=lambda n: score[n])
        k = selectors[rules[f]](per, inner)
        held += [per[c][k] for c in _of(per, [f])]
    return aggregate(held), rules


def fmt(m: ChannelMetrics) -> str:
    return f"{m.event.tp}/{m.event.fp}/{m.event.fn}  event F1 {m.event.f1:.3f}  point F1 {m.point.f1:.3f}"


def _grid(channel: str, ckpt_dir: str, cache_dir: str | None) -> tuple[str, dict[str, ChannelMetrics]]:
    from smap_shared.evaluation.evaluate import evaluate_channel

    r = evaluate_channel(channel, ckpt_dir, None, None, cache_dir)
    assert r.grid is not None
    return channel, dict(r.grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--cache", default=None, help="the evaluation's --score-cache folder")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    from tqdm import tqdm

    from smap_shared.data import default_source

    channels = default_source(None).channels()
    per: dict[str, dict[str, ChannelMetrics]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = pool.map(_grid, channels, [args.checkpoints] * len(channels), [args.cache] * len(channels))
        for ch, grid in tqdm(jobs, total=len(channels), desc="channels", unit="channel"):
            per[ch] = grid
    families = sorted({family(c) for c in per})
    for name, sel in SELECTORS.items():
        print(f"leave-one-family-out, {name:8s} {fmt(lofo(per, families, sel)[0])}")
    held, rules = nested(per, families)
    print(f"nested (rule chosen inside) {fmt(held)}; rules: {rules}")


if __name__ == "__main__":
    main()
