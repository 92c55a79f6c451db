"""Issue 15: is the leave-one-family-out headline held back by how the protocol picks a variant?

The evaluation's procedure (`smap_shared.evaluation.selection.choose`) picks a selection rule by an inner
leave-one-family-out, then the variant with it. This script prints what each rule alone gives held out and
what the nested procedure gives. The rules, in the order they were tried:
- `pooled`: the best event F1 + point F1 on TP/FP/FN summed over the selecting families (the protocol's
  only rule until 2026-12-07);
- `macro`: the mean over the selecting families of each family's event F1 + point F1;
- `robust`: the pooled objective in the worst case with one more selecting family left out;
- `marginal`: each option set on its own, to the value best on average over the other options (added after
  the first three were seen: its own held-out number is optimistic by that, the nested one is not).

    python -m research.selection_rules [--checkpoints checkpoints] [--cache /tmp/scorecache]
"""

from __future__ import annotations

import argparse

from research.grids import add_args, fmt, per_channel
from smap_shared.evaluation.metrics import ChannelMetrics
from smap_shared.evaluation.selection import SELECTORS, cross_validate, family, nested_cross_validate


def _grid(channel: str, ckpt_dir: str, cache_dir: str | None) -> tuple[str, dict[str, ChannelMetrics]]:
    from smap_shared.evaluation.evaluate import evaluate_channel

    r = evaluate_channel(channel, ckpt_dir, None, None, cache_dir)
    assert r.grid is not None
    return channel, dict(r.grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(ap)
    per = per_channel(_grid, ap.parse_args())
    for name, sel in SELECTORS.items():
        print(f"leave-one-family-out, {name:8s} {fmt(cross_validate(per, family, sel, name)[1])}")
    folds, held = nested_cross_validate(per)
    print(f"nested (rule chosen inside) {fmt(held)}; rules: { {f.held_out: f.rule for f in folds} }")


if __name__ == "__main__":
    main()
