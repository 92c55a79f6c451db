"""One PNG per channel: what the rules saw, their thresholds, the labelled segments and the alarms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RuleTrace:
    """One rule's view of a channel's test split."""

    signal: Array
    threshold: Array
    detected: BoolArray


def _runs(mask: BoolArray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist(), strict=True))


def plot_channel(
    path: Path, channel: str, value: Array, score: Array, segments: Sequence[tuple[int, int]],
    traces: Mapping[str, RuleTrace], deployed: str, score_rules: Sequence[str] = ("fixed", "train_pot"),
) -> None:
    """Top: the telemetry value; middle: the raw anomaly score with the score thresholds; bottom: the
    deployed rule's signal and threshold. Labelled segments are shaded red, each rule's alarms are drawn as
    a bar under its panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(value))
    fig, axes = plt.subplots(3, 1, figsize=(12, 6), sharex=True, height_ratios=[1, 1.2, 1.2])
    ax_v, ax_s, ax_d = axes
    ax_v.plot(t, value, lw=0.6, color="0.2")
    ax_v.set_ylabel("value (col 0)")
    ax_s.plot(t, score, lw=0.5, color="tab:blue", label="anomaly score (MSE)")
    colors = {"fixed": "tab:orange", "train_pot": "tab:green"}
    for name in score_rules:
        if name in traces:
            tr = traces[name]
            ax_s.plot(t, tr.threshold, lw=0.9, ls="--", color=colors.get(name, "k"), label=f"{name} threshold")
    ax_s.set_yscale("log")
    ax_s.set_ylabel("score")
    dep = traces[deployed]
    ax_d.plot(t, dep.signal, lw=0.6, color="tab:purple", label=f"{deployed} signal")
    ax_d.plot(t, dep.threshold, lw=0.9, ls="--", color="k", label=f"{deployed} threshold")
    top = float(np.nanmax(dep.signal)) if dep.signal.size else 1.0
    ax_d.set_ylim(0, top * 1.25 if top > 0 else 1.0)
    ax_d.set_ylabel("smoothed |error|")
    for ax in axes:
        for a, b in segments:
            ax.axvspan(a, b, color="red", alpha=0.15, lw=0)
    # alarm bars: one thin band per rule below the axes' data
    for ax, names in ((ax_s, [n for n in score_rules if n in traces]), (ax_d, [deployed])):
        lo, hi = ax.get_ylim()
        for k, name in enumerate(names):
            for a, b in _runs(traces[name].detected):
                ax.axvspan(a, b + 1, ymin=0.02 + 0.05 * k, ymax=0.06 + 0.05 * k,
                           color=colors.get(name, "tab:purple"), lw=0)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax_d.set_xlabel("test row")
    fig.suptitle(f"{channel}: labelled segments shaded red, alarms as bars under each panel", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
