"""Anomaly labels from telemanom's `labeled_anomalies.csv`.

Intervals are inclusive `[start, end]` index pairs into the test split. A channel may have several rows
(SMAP's P-2 has two): their intervals are merged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, order=True)
class Interval:
    """An inclusive [start, end] range of test-split row indices."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid label interval [{self.start}, {self.end}]")

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.start <= index <= self.end


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge overlapping or touching intervals (inclusive ends)."""
    merged: list[Interval] = []
    for iv in sorted(intervals):
        if merged and iv.start <= merged[-1].end + 1:
            last = merged[-1]
            merged[-1] = Interval(last.start, max(last.end, iv.end))
        else:
            merged.append(iv)
    return merged


class LabelError(ValueError):
    """labeled_anomalies.csv cannot give the labels asked for (no rows for the channels, or ambiguous ones)."""


def parse_labels(rows: Iterable[dict[str, str]], spacecraft: str | None = "SMAP") -> dict[str, list[Interval]]:
    """Channel -> merged inclusive intervals, from the CSV's rows: one spacecraft's, or every row (None).
    A channel in the result had a row (its interval list may be empty); one absent had none. With every row,
    a channel id listed under two spacecraft is refused (LabelError): name the spacecraft."""
    return {chan: ivs for chan, (_, ivs) in parse_labelled(rows, spacecraft).items()}


def parse_labelled(rows: Iterable[dict[str, str]], spacecraft: str | None = None
                   ) -> dict[str, tuple[str, list[Interval]]]:
    """parse_labels, keeping each channel's spacecraft: channel -> (spacecraft, merged intervals)."""
    out: dict[str, tuple[str, list[Interval]]] = {}
    for row in rows:
        craft = row["spacecraft"].strip()
        if spacecraft is not None and craft != spacecraft:
            continue
        chan = row["chan_id"].strip()
        pairs = json.loads(row["anomaly_sequences"])
        seen, ivs = out.setdefault(chan, (craft, []))
        if seen != craft:
            raise LabelError(f"channel {chan} is labelled for both {seen} and {craft}: choose one (--spacecraft)")
        ivs.extend(Interval(int(a), int(b)) for a, b in pairs)
    return {chan: (craft, merge_intervals(ivs)) for chan, (craft, ivs) in out.items()}


def load_labels(path: Path, spacecraft: str | None = "SMAP") -> dict[str, list[Interval]]:
    with path.open(newline="") as fh:
        return parse_labels(csv.DictReader(fh), spacecraft)


def load_labelled(path: Path, spacecraft: str | None = None) -> dict[str, tuple[str, list[Interval]]]:
    with path.open(newline="") as fh:
        return parse_labelled(csv.DictReader(fh), spacecraft)


def label_mask(intervals: Iterable[Interval], length: int) -> npt.NDArray[np.bool_]:
    """Boolean per-row mask of the test split, True inside any labelled interval."""
    mask = np.zeros(length, dtype=bool)
    for iv in intervals:
        mask[iv.start : min(iv.end, length - 1) + 1] = True
    return mask
