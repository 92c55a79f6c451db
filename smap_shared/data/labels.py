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


def parse_labels(rows: Iterable[dict[str, str]], spacecraft: str | None = "SMAP") -> dict[str, list[Interval]]:
    """Channel -> merged inclusive intervals, from the CSV's rows (optionally one spacecraft only)."""
    out: dict[str, list[Interval]] = {}
    for row in rows:
        if spacecraft is not None and row["spacecraft"].strip() != spacecraft:
            continue
        chan = row["chan_id"].strip()
        pairs = json.loads(row["anomaly_sequences"])
        out.setdefault(chan, []).extend(Interval(int(a), int(b)) for a, b in pairs)
    return {chan: merge_intervals(ivs) for chan, ivs in out.items()}


def load_labels(path: Path, spacecraft: str | None = "SMAP") -> dict[str, list[Interval]]:
    with path.open(newline="") as fh:
        return parse_labels(csv.DictReader(fh), spacecraft)


def label_mask(intervals: Iterable[Interval], length: int) -> npt.NDArray[np.bool_]:
    """Boolean per-row mask of the test split, True inside any labelled interval."""
    mask = np.zeros(length, dtype=bool)
    for iv in intervals:
        mask[iv.start : min(iv.end, length - 1) + 1] = True
    return mask
