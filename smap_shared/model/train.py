"""Train OmniAnomaly per entity on its train split and write one checkpoint per entity.

    smap-train --entities A-1 P-1 --out checkpoints/      # some entities
    smap-train --deployed --out checkpoints/              # the 20 deployed models of the fleet
    smap-train --all --out checkpoints/                   # every SMAP channel

Stateful truncated back-propagation through time: the train sequence is cut into `segments` contiguous
parts trained as one batch, each walked in chunks of `chunk` steps with the GRU state carried (detached)
from one chunk to the next. The network thus learns with the state it will have when streaming, and a
whole-sequence GRU call replaces thousands of single steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.data import ChannelData, DataSource, default_source
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.normalization import Normalizer
from smap_shared.model.rules import DEPLOYED_RULE, DEPLOYED_RULE_NAME, FITTED_RULE_FIELDS
from smap_shared.model.threshold import pot_threshold

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 1e-2
    beta: float = 0.01  # weight of the KL divergence in the loss (the spec's β)
    chunk: int = 128
    segments: int = 16
    seed: int = 42
    pot_risk: float = 1e-3
    pot_init_quantile: float = 0.98


def _segments(z: Array, n_seg: int) -> Array:
    """(T, n) -> (T // n_seg, n_seg, n): n_seg contiguous parts side by side as one batch."""
    n_seg = max(1, min(n_seg, len(z) // 32))
    length = len(z) // n_seg
    return np.stack([z[i * length : (i + 1) * length] for i in range(n_seg)], axis=1)


def fit_weights(
    z: Array, n_sensors: int, cfg: TrainConfig, *, epochs: int | None = None, chunk: int | None = None,
    loss_weights: Array | None = None, predict: bool = False,
) -> dict[str, Array]:
    """Seeded stateful TBPTT of a fresh network on a normalised train sequence; float64 weights.

    `loss_weights` (per sensor) and `predict` (target = the next row) serve the evaluation's training
    experiments; the deployed models use neither."""
    import torch

    from smap_shared.model.network import OmniAnomaly

    epochs = cfg.epochs if epochs is None else epochs
    chunk = cfg.chunk if chunk is None else chunk
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    batch = torch.from_numpy(_segments(z, cfg.segments).astype(np.float32))
    w = None if loss_weights is None else torch.from_numpy(loss_weights.astype(np.float32))
    model = OmniAnomaly(n_sensors)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(epochs):
        hidden = None
        for start in range(0, batch.shape[0], chunk):
            # with `predict`, one extra row is read so that every input row has its successor as target
            x = batch[start : start + chunk + (1 if predict else 0)]
            inp, target = (x[:-1], x[1:]) if predict else (x, x)
            if inp.shape[0] == 0:
                continue
            recon, mu, logvar, hidden = model(inp, hidden, sample=True)
            hidden = hidden.detach()
            sq = (recon - target) ** 2
            mse = torch.mean(sq if w is None else sq * w)
            kld = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
            loss = mse + cfg.beta * kld
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return {k: v.detach().double().numpy().copy() for k, v in model.state_dict().items()}


def train_entity(data: ChannelData, cfg: TrainConfig) -> Checkpoint:
    import torch

    norm = Normalizer.fit(data.train)
    z = norm.transform(data.train)
    weights = fit_weights(z, data.n_sensors, cfg)
    train_errors = sensor_errors_torch(weights, data.n_sensors, z)
    train_scores = train_errors.mean(axis=1)
    fit = pot_threshold(train_scores, risk=cfg.pot_risk, init_quantile=cfg.pot_init_quantile)
    # The deployed decision rule, fitted on the train split scored as a stream (as Scorer.run would).
    rule = DEPLOYED_RULE.fit(train_scores, train_errors, data.train)
    meta = {
        "entity": data.channel,
        "n_sensors": data.n_sensors,
        "train_rows": len(data.train),
        "data_hash": data.train_hash(),
        "train_config": asdict(cfg),
        "threshold_fit": fit.as_dict(),
        "decision_rule_name": DEPLOYED_RULE_NAME,
        "decision_rule": rule.to_dict(),
        "train_score_max": float(train_scores.max()),
        "train_score_mean": float(train_scores.mean()),
        "torch_version": torch.__version__,
    }
    return Checkpoint(data.channel, data.n_sensors, weights, norm, fit.value, meta)


def score_sequence_torch(weights: dict[str, Array], n_sensors: int, z: Array) -> Array:
    """Deterministic scores of a normalised sequence in one GRU pass (float64), from a zero state."""
    scores: Array = sensor_errors_torch(weights, n_sensors, z).mean(axis=1)
    return scores


def sensor_errors_torch(weights: dict[str, Array], n_sensors: int, z: Array) -> Array:
    """Per-sensor squared errors (T, n) of a normalised sequence in one GRU pass (float64), zero state."""
    import torch

    from smap_shared.model.network import OmniAnomaly

    model = OmniAnomaly(n_sensors).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(z).unsqueeze(1)
        recon, _, _, _ = model(x)
        out: Array = ((recon.squeeze(1) - x.squeeze(1)) ** 2).numpy()
    return out


def _train_one(channel: str, data_root: str | None, out_dir: str, cfg: TrainConfig) -> tuple[str, float, str]:
    import torch

    torch.set_num_threads(1)  # one process per core beats two threads on tiny GRU matrices
    t0 = time.perf_counter()
    source = default_source(Path(data_root) if data_root else None)
    ckpt = train_entity(source.load(channel), cfg)
    path = Path(out_dir) / f"{channel}.ckpt"
    ckpt.save(path)
    method = ckpt.meta["threshold_fit"]["method"]
    return channel, time.perf_counter() - t0, f"threshold {ckpt.threshold:.4g} ({method})"


def train_many(
    channels: list[str], out_dir: Path, cfg: TrainConfig, data_root: Path | None = None,
    jobs: int | None = None, progress: bool = True,
) -> dict[str, float]:
    """Train each channel in its own process (`jobs` at a time); returns seconds per channel."""
    from tqdm import tqdm

    jobs = jobs or min(len(channels), os.cpu_count() or 1)
    times: dict[str, float] = {}
    bar = tqdm(total=len(channels), desc="training", unit="entity", disable=not progress, file=sys.stderr)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(_train_one, ch, str(data_root) if data_root else None, str(out_dir), cfg)
            for ch in channels
        ]
        for fut in as_completed(futures):
            ch, secs, info = fut.result()
            times[ch] = secs
            bar.set_postfix_str(f"{ch}: {secs:.1f}s, {info}")
            bar.update()
    bar.close()
    return times


def up_to_date(path: Path) -> bool:
    """A checkpoint exists and carries the deployed decision rule, fitted as now (the rule's options are
    part of the checkpoint: one fitted with an older deployed rule must be trained again)."""
    if not path.exists():
        return False
    try:
        meta = Checkpoint.load(path).meta
    except Exception:  # unreadable: train it again
        return False
    rule = meta.get("decision_rule") or {}
    settings = {k: v for k, v in DEPLOYED_RULE.to_dict().items() if k not in FITTED_RULE_FIELDS}
    return bool(meta.get("decision_rule_name") == DEPLOYED_RULE_NAME
                and all(rule.get(k) == v for k, v in settings.items()))


def resolve_channels(args: argparse.Namespace, source: DataSource) -> list[str]:
    from smap_shared.fleet import load_fleet

    if args.all:
        return source.channels()
    if args.deployed:
        return list(load_fleet(args.fleet).deployed)
    known = set(source.channels())
    unknown = [c for c in args.entities if c not in known]
    if unknown:
        raise SystemExit(f"unknown entities: {', '.join(unknown)}")
    return list(args.entities)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--entities", nargs="+", metavar="ENTITY")
    who.add_argument("--deployed", action="store_true", help="the deployed models of the fleet config")
    who.add_argument("--all", action="store_true", help="every channel of the data source")
    ap.add_argument("--out", type=Path, default=Path("checkpoints"))
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("SMAP_DATA_DIR") or None,
                    help="official telemanom layout; default: the vendored copy")
    ap.add_argument("--fleet", type=Path, default=None)
    ap.add_argument("--missing-only", action="store_true",
                    help="skip entities whose checkpoint exists and carries the deployed decision rule")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    source = default_source(args.data_dir)
    channels = resolve_channels(args, source)
    if args.missing_only:
        channels = [c for c in channels if not up_to_date(args.out / f"{c}.ckpt")]
    if not channels:
        print("nothing to train: all checkpoints exist and carry the deployed decision rule")
        return
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    t0 = time.perf_counter()
    train_many(channels, args.out, cfg, args.data_dir, args.jobs)
    print(f"trained {len(channels)} entities in {time.perf_counter() - t0:.1f}s -> {args.out}/")


if __name__ == "__main__":
    main()
