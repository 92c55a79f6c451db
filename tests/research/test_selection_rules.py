"""research.selection_rules: each rule picks on the selecting families only, and the nested protocol never
lets the family it scores reach the choice of the rule or of the variant."""

from __future__ import annotations

from research.selection_rules import lofo, macro, marginal, nested, pooled, robust
from smap_shared.evaluation.metrics import ChannelMetrics, Counts


def m(tp: int, fp: int, fn: int) -> ChannelMetrics:
    return ChannelMetrics(event=Counts(tp, fp, fn), point=Counts(tp, fp, fn), pa_k=[], auprc=float("nan"),
                          roc_auc=float("nan"), delays=[], n_rows=100, n_segments=tp + fn)


def grid() -> dict[str, dict[str, ChannelMetrics]]:
    """'safe' is decent everywhere; 'planted' is perfect on family Z only and useless elsewhere."""
    out = {f"{f}-{i}": {"alarm=safe": m(1, 1, 0), "alarm=planted": m(0, 5, 1)} for f in "ABCD" for i in (1, 2)}
    out |= {f"Z-{i}": {"alarm=safe": m(1, 1, 0), "alarm=planted": m(1, 0, 0)} for i in (1, 2)}
    return out


def test_no_rule_picks_what_only_the_held_out_family_favours() -> None:
    per = grid()
    families = ["A", "B", "C", "D", "Z"]
    for sel in (pooled, macro, robust, marginal):
        held, picks = lofo(per, families, sel)
        assert picks["Z"] == "alarm=safe"  # Z's labels never reach the choice that scores Z
    held, rules = nested(per, families)
    assert held.event.tp == 10 and held.event.fp == 10  # 'safe' everywhere
    assert set(rules) == set(families)


def test_robust_drops_a_variant_whose_edge_rests_on_one_family() -> None:
    per = grid()
    # pooled over A..D and Z, 'planted' wins only through Z's counts when Z weighs enough: make it so
    per |= {f"Z-{i}": {"alarm=safe": m(0, 3, 1), "alarm=planted": m(4, 0, 0)} for i in range(3, 9)}
    families = ["A", "B", "C", "D", "Z"]
    assert pooled(per, families) == "alarm=planted"
    assert robust(per, families) == "alarm=safe"


def test_marginal_sets_each_option_by_its_average_over_the_others() -> None:
    """Joint argmax takes the one lucky combination; marginal takes, per option, the value that is good
    whatever the other option is."""
    per = {f"{f}-1": {"a=1,b=1": m(3, 0, 0), "a=1,b=2": m(0, 4, 3), "a=2,b=1": m(2, 1, 1), "a=2,b=2": m(2, 1, 1)}
           for f in "ABC"}
    assert pooled(per, ["A", "B", "C"]) == "a=1,b=1"
    assert marginal(per, ["A", "B", "C"]) == "a=2,b=1"
