"""Scores of a channel's train and test splits through the pipeline's own inference path.

`Scorer.run` is what the Triton model does row by row (normalise, stateful GRU step from a zero state, MSE
in normalised units); each split is scored as one fresh stream, as the simulator replays it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.data import ChannelData
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.rules import DEPLOYED_RULE, Rule
from smap_shared.model.scorer import Scorer

Array = npt.NDArray[np.float64]
CACHE_VERSION = 1


@dataclass(frozen=True)
class SplitScores:
    score: Array  # (T,) anomaly_score
    sensor_error: Array  # (T, n) per-sensor squared error, normalised units


@dataclass(frozen=True)
class ChannelScores:
    channel: str
    train: SplitScores
    test: SplitScores
    segments: list[tuple[int, int]]  # inclusive labelled test intervals (scoring only)
    checkpoint_threshold: float


def score_split(scorer: Scorer, rows: Array) -> SplitScores:
    out = scorer.run(rows)
    return SplitScores(out.anomaly_score, out.sensor_error)


def _cache_key(ckpt_path: Path, data: ChannelData) -> str:
    h = hashlib.sha256(ckpt_path.read_bytes())
    h.update(np.ascontiguousarray(data.test).tobytes())
    h.update(np.ascontiguousarray(data.train).tobytes())
    return f"v{CACHE_VERSION}-{h.hexdigest()[:20]}"


def score_channel(ckpt_path: Path, data: ChannelData, cache_dir: Path | None = None) -> ChannelScores:
    """Score both splits of `data` with the checkpoint at `ckpt_path` (optionally cached on disk)."""
    ckpt = Checkpoint.load(ckpt_path)
    segments = [(iv.start, iv.end) for iv in data.labels]
    cached = cache_dir / f"{data.channel}.{_cache_key(ckpt_path, data)}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        with np.load(cached) as npz:
            train = SplitScores(npz["train_score"], npz["train_err"].astype(np.float64))
            test = SplitScores(npz["test_score"], npz["test_err"].astype(np.float64))
        return ChannelScores(data.channel, train, test, segments, ckpt.threshold)
    scorer = Scorer(ckpt)
    train = score_split(scorer, data.train)
    test = score_split(scorer, data.test)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            np.savez(
                fh, train_score=train.score, train_err=train.sensor_error,
                test_score=test.score, test_err=test.sensor_error,
            )
        tmp.replace(cached)
    return ChannelScores(data.channel, train, test, segments, ckpt.threshold)


def fit_deployed_rule(ckpt: Checkpoint, train_rows: Array, rule: Rule = DEPLOYED_RULE) -> Rule:
    """The deployed rule fitted for one entity: its train split scored as a stream, as `Scorer.run` does.

    Store `fit_deployed_rule(...).to_dict()` with the model (checkpoint meta or model config) and rebuild it
    with `rules.rule_from_dict`; each stream then starts from `rule.initial_state()`."""
    out = Scorer(ckpt).run(train_rows)
    return rule.fit(out.anomaly_score, out.sensor_error, train_rows)
