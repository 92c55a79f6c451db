"""What the leave-one-family-out studies share: every SMAP channel's variants scored in a process pool
(`--checkpoints`, `--cache`: the evaluation's score cache, `--jobs`), and one line per summed result."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from smap_shared.evaluation.metrics import ChannelMetrics

#: (channel, checkpoint folder, score-cache folder or None) -> (channel, variant -> metrics); runs in a worker.
ChannelGrid = Callable[[str, str, str | None], tuple[str, dict[str, ChannelMetrics]]]


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--cache", default=None, help="the evaluation's --score-cache folder")
    ap.add_argument("--jobs", type=int, default=2)


def per_channel(grid: ChannelGrid, args: argparse.Namespace) -> dict[str, dict[str, ChannelMetrics]]:
    """`grid` of every SMAP channel, in channel order, with a progress bar."""
    from tqdm import tqdm

    from smap_shared.data import default_source

    channels = default_source(None).channels()
    per: dict[str, dict[str, ChannelMetrics]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = pool.map(grid, channels, [args.checkpoints] * len(channels), [args.cache] * len(channels))
        for ch, metrics in tqdm(jobs, total=len(channels), desc="channels", unit="channel"):
            per[ch] = metrics
    return per


def fmt(m: ChannelMetrics) -> str:
    return f"{m.event.tp}/{m.event.fp}/{m.event.fn}  event F1 {m.event.f1:.3f}  point F1 {m.point.f1:.3f}"
