"""The protocol's selection rules and its nested leave-one-family-out (smap_shared.evaluation.selection):
every rule picks on the selecting families only, and neither the rule nor the variant that scores a family
is chosen with that family's labels."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smap_shared.evaluation.metrics import PA_K_GRID, ChannelMetrics, Counts
from smap_shared.evaluation.selection import (
    SELECTORS,
    choose,
    cross_validate,
    macro,
    marginal,
    nested_cross_validate,
    pooled,
    robust,
)


def m(tp: int, fp: int, fn: int) -> ChannelMetrics:
    c = Counts(tp, fp, fn)
    return ChannelMetrics(c, c, [c] * len(PA_K_GRID), 0.5, 0.5, [], 100, tp + fn)


def by_family(per: dict[str, dict[str, ChannelMetrics]], families: str) -> dict[str, list[str]]:
    return {f: [c for c in per if c.startswith(f + "-")] for f in families}


def test_each_rule_and_the_nested_procedure_leave_a_planted_variant_alone() -> None:
    """'planted' is perfect on family Z only (what looking at Z's labels would pick) and poor elsewhere."""
    per = {f"{f}-{i}": {"alarm=safe": m(1, 1, 0), "alarm=planted": m(0, 5, 1)} for f in "ABCD" for i in (1, 2)}
    per |= {f"Z-{i}": {"alarm=safe": m(1, 1, 0), "alarm=planted": m(1, 0, 0)} for i in (1, 2)}
    for name, sel in SELECTORS.items():
        folds, _ = cross_validate(per, select=sel, rule=name)
        assert next(f for f in folds if f.held_out == "Z").selected == "alarm=safe", name
    folds, held = nested_cross_validate(per)
    assert {f.selected for f in folds} == {"alarm=safe"}
    assert (held.event.tp, held.event.fp) == (10, 10)


def test_robust_drops_a_variant_whose_edge_rests_on_one_family() -> None:
    per = {f"{f}-1": {"alarm=safe": m(1, 1, 0), "alarm=planted": m(0, 5, 1)} for f in "ABCD"}
    per |= {f"Z-{i}": {"alarm=safe": m(0, 3, 1), "alarm=planted": m(4, 0, 0)} for i in range(1, 8)}
    groups = by_family(per, "ABCDZ")
    assert pooled(per, groups) == "alarm=planted"  # Z's many channels outweigh the others' counts
    assert robust(per, groups) == "alarm=safe"  # without Z it is poor: its edge rests on one family
    assert macro(per, groups) == "alarm=safe"


def test_marginal_sets_each_option_by_its_average_over_the_others() -> None:
    """Joint argmax takes the one lucky combination; marginal takes, per option, the value that is good
    whatever the other option is."""
    per = {f"{f}-1": {"a=1,b=1": m(3, 0, 0), "a=1,b=2": m(0, 4, 3), "a=2,b=1": m(2, 1, 1),
                      "a=2,b=2": m(2, 1, 1)} for f in "ABC"}
    groups = by_family(per, "ABC")
    assert pooled(per, groups) == "a=1,b=1"
    assert marginal(per, groups) == "a=2,b=1"


COUNTS = st.builds(m, st.integers(0, 3), st.integers(0, 6), st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), families=st.integers(3, 4), variants=st.integers(1, 3))
def test_a_held_out_familys_labels_reach_neither_its_rule_nor_its_variant(
        data: st.DataObject, families: int, variants: int) -> None:
    """Whatever the held-out family's results are (its labels changed at will), the rule and the variant
    the nested procedure chooses for it do not move, and a variant planted for it alone is never chosen."""
    names = [f"v={i}" for i in range(variants)]
    fams = [chr(ord("A") + i) for i in range(families)]
    per = {f"{fam}-{n}": {v: data.draw(COUNTS) for v in names} for fam in fams for n in (1, 2)}
    target = data.draw(st.sampled_from(fams))
    for chan, metrics in per.items():
        metrics["v=leak"] = m(5, 0, 0) if chan.startswith(target) else m(0, 50, 5)
    fold = next(f for f in nested_cross_validate(per)[0] if f.held_out == target)
    assert fold.selected != "v=leak"
    changed = {c: ({v: data.draw(COUNTS) for v in ms} if c.startswith(target) else ms) for c, ms in per.items()}
    again = next(f for f in nested_cross_validate(changed)[0] if f.held_out == target)
    assert (again.rule, again.selected) == (fold.rule, fold.selected)


def test_with_one_family_nothing_chooses_a_rule_and_the_first_one_picks() -> None:
    per = {"A-1": {"x=1": m(1, 0, 0), "x=2": m(0, 1, 1)}, "A-2": {"x=1": m(1, 0, 0), "x=2": m(0, 1, 1)}}
    assert choose(per) == ("pooled", "x=1")
