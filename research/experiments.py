"""Training / normalisation / scoring variants measured by the evaluation (proposals for smap_shared.model).

Nothing here is used by the pipeline. Each variant trains the spec's OmniAnomaly network unchanged and
differs only in:

* `norm`: "minmax" (the current train min-max) or "fixed": SMAP's publishers scale every split of every
  channel to [-1, 1] on its own, and command flags are 0/1, so a fixed map (value column [-1, 1] -> [0, 1],
  flags as they are) keeps the test split inside the decoder's range, where a train min-max of a nearly
  constant train column sends the whole test split to the clip bounds.
* `value_weight`: share of the loss on the telemetry value column (column 0, the one the labels refer to;
  the other 24 columns are command flags). None keeps the plain mean over columns.
* `predict`: train the network to output the next row (input x[t], target x[t+1]); the error of row t is
  then taken against the output of step t-1, so a row that breaks the learned dynamics scores high even
  when it lies in the usual range (reconstructing x[t] after having read it hides such rows).

    python -m research.experiments --variant fixed-w50-pred --out /work/eval-ckpt/x
    python -m research.experiments --score /work/eval-ckpt/x      # the report's table row

`--score` runs the evaluation's rules (fitted on train only) over the errors a variant wrote and prints
its row of the report's "variants tried" table, the oracle included. `--start-state CKPT_DIR` measures,
on the deployed checkpoints, whether a stream started from the GRU state reached at the end of the train
split (a burn-in) would start better than from zeros, and what a shorter warm-up would cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.data import ChannelData, default_source
from smap_shared.evaluation.metrics import ChannelMetrics, aggregate, count_metrics, counts_only
from smap_shared.evaluation.selection import oracle_counts
from smap_shared.model.normalization import CLIP, Normalizer
from smap_shared.model.rules import DEPLOYED_RULE, HYBRID_RULE, CausalNdtRule, Rule
from smap_shared.model.train import TrainConfig, fit_weights

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Variant:
    norm: str = "minmax"  # "minmax" | "fixed"
    value_weight: float | None = None
    predict: bool = False
    epochs: int = 30
    chunk: int = 128

    @classmethod
    def parse(cls, name: str) -> Variant:
        """e.g. "fixed-w50-pred-e60-c32": fixed norm, 50% of the loss on column 0, next-step, 60 epochs,
        truncated back-propagation in chunks of 32 steps."""
        v = cls()
        for part in name.split("-"):
            if part in ("minmax", "fixed"):
                v = replace(v, norm=part)
            elif part.startswith("w") and part[1:].isdigit():
                v = replace(v, value_weight=int(part[1:]) / 100)
            elif part == "pred":
                v = replace(v, predict=True)
            elif part.startswith("e") and part[1:].isdigit():
                v = replace(v, epochs=int(part[1:]))
            elif part.startswith("c") and part[1:].isdigit():
                v = replace(v, chunk=int(part[1:]))
            elif part != "base":
                raise ValueError(f"unknown variant part {part!r}")
        return v


def fixed_normalizer(n_sensors: int) -> Normalizer:
    lo = np.zeros(n_sensors)
    span = np.ones(n_sensors)
    lo[0], span[0] = -1.0, 2.0
    return Normalizer(lo=lo, span=span, clip=CLIP)


def make_normalizer(v: Variant, train: Array) -> Normalizer:
    return fixed_normalizer(train.shape[1]) if v.norm == "fixed" else Normalizer.fit(train)


def column_weights(v: Variant, n: int) -> Array:
    """Per-column loss weights with mean 1 (so the learning rate means the same as with a plain mean)."""
    if v.value_weight is None or n == 1:
        return np.ones(n, dtype=np.float64)
    w: Array = np.full(n, (1.0 - v.value_weight) / (n - 1), dtype=np.float64)
    w[0] = v.value_weight
    return w * float(n)


def train_variant(data: ChannelData, v: Variant, cfg: TrainConfig) -> tuple[dict[str, Array], Normalizer]:
    norm = make_normalizer(v, data.train)
    weights = fit_weights(
        norm.transform(data.train), data.n_sensors, cfg, epochs=v.epochs, chunk=v.chunk,
        loss_weights=column_weights(v, data.n_sensors), predict=v.predict,
    )
    return weights, norm


def sensor_errors(weights: dict[str, Array], norm: Normalizer, rows: Array, predict: bool) -> Array:
    """(T, n) squared errors in normalised units, one stateful pass from a zero state (float64).

    With `predict`, row t is compared with the output of step t-1 (row 0 with the output of a zero input,
    which is what a stream with no history would have)."""
    import torch

    from smap_shared.model.network import OmniAnomaly

    n = rows.shape[1]
    model = OmniAnomaly(n).double()
    model.load_state_dict({k: torch.from_numpy(val) for k, val in weights.items()})
    model.eval()
    z = norm.transform(rows)
    with torch.no_grad():
        recon, _, _, _ = model(torch.from_numpy(z).unsqueeze(1))
        out: Array = recon.squeeze(1).numpy()
    if predict:
        with torch.no_grad():
            first, _, _, _ = model(torch.zeros(1, 1, n, dtype=torch.float64))
        out = np.concatenate([first.squeeze(1).numpy(), out[:-1]])
    err: Array = (z - out) ** 2
    return err


def _run_one(channel: str, name: str, out_dir: str) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    v = Variant.parse(name)
    data = default_source().load(channel)
    weights, norm = train_variant(data, v, TrainConfig())
    tr = sensor_errors(weights, norm, data.train, v.predict)
    te = sensor_errors(weights, norm, data.test, v.predict)
    path = Path(out_dir) / f"{channel}.v1-{name}.npz"
    with path.open("wb") as fh:
        np.savez(
            fh, train_score=tr.mean(axis=1), train_err=tr, test_score=te.mean(axis=1), test_err=te,
            **{f"w/{k}": val for k, val in weights.items()}, norm_lo=norm.lo, norm_span=norm.span,
        )
    return channel, time.perf_counter() - t0


#: The rules a variant's errors are scored with (the report's table: causal_ndt, causal_ndt_hybrid, and
#: the deployed rule, whose raw-value alarms do not depend on the model).
SCORE_RULES: dict[str, Rule] = {"causal_ndt": CausalNdtRule(), "causal_ndt_hybrid": HYBRID_RULE,
                                "deployed": DEPLOYED_RULE}
WARMUP = CausalNdtRule.warmup


def table_row(m: ChannelMetrics) -> str:
    """A cell of the report's "variants tried" table: event TP/FP/FN, event F1; point-wise F1."""
    e = m.event
    return f"{e.tp}/{e.fp}/{e.fn}, {e.f1:.3f}; {m.point.f1:.3f}"


def score_errors(channel: str, errors: dict[str, Array]) -> dict[str, ChannelMetrics]:
    """Each SCORE_RULES rule fitted on the train split's errors and run over the test split's, plus the
    oracle (the best static threshold on the smoothed value error chosen WITH the labels: a bound)."""
    data = default_source().load(channel)
    segs = [(iv.start, iv.end) for iv in data.labels]
    out = {}
    for name, rule in SCORE_RULES.items():
        run = rule.fit(errors["train_score"], errors["train_err"], data.train).run(
            errors["test_score"], errors["test_err"], raw=data.test)
        out[name] = count_metrics(run.detected, segs)
    signal = CausalNdtRule().smoothed(errors["test_score"], errors["test_err"])
    out["oracle"] = counts_only(*oracle_counts(signal, segs, WARMUP), signal.size, len(segs))
    return out


def _score_file(path: str) -> tuple[str, dict[str, ChannelMetrics]]:
    channel = Path(path).name.split(".")[0]  # <channel>.v1-<variant>.npz
    with np.load(path) as npz:
        errors = {k: npz[k] for k in ("train_score", "train_err", "test_score", "test_err")}
    return channel, score_errors(channel, errors)


def score_variant(out_dir: Path, jobs: int = 2) -> dict[str, ChannelMetrics]:
    """The table row of the variant whose errors `--variant ... --out out_dir` wrote (all its channels)."""
    files = sorted(str(p) for p in out_dir.glob("*.npz"))
    if not files:
        raise SystemExit(f"{out_dir}: no variant errors (*.npz); run --variant NAME --out {out_dir} first")
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        per = dict(pool.map(_score_file, files))
    return {k: aggregate([t[k] for t in per.values()]) for k in (*SCORE_RULES, "oracle")}


@dataclass(frozen=True)
class StartState:
    """One channel: the deployed rule's counts per "start/warm-up", and how far apart the two starts' mean
    value error over the first 300 test rows lies."""

    tallies: dict[str, ChannelMetrics]  # counts only (metrics.counts_only)
    first_rows_gap: float


def start_state_effect(ckpt_dir: Path, channel: str, warmups: tuple[int, ...]) -> StartState:
    """The test split scored from a zero GRU state and from the state at the end of the train split (a
    burn-in), and the deployed rule run over each with every warm-up in `warmups`."""
    from smap_shared.model.checkpoint import Checkpoint
    from smap_shared.model.scorer import HIDDEN_SIZE, Scorer

    data = default_source().load(channel)
    segs = [(iv.start, iv.end) for iv in data.labels]
    scorer = Scorer(Checkpoint.load(ckpt_dir / f"{channel}.ckpt"))
    if not isinstance(scorer.rule, CausalNdtRule):
        raise SystemExit(f"{channel}: the checkpoint's rule has no warm-up; retrain it (smap-train)")
    burnt = scorer.run(data.train).final_state[:HIDDEN_SIZE]
    tallies: dict[str, ChannelMetrics] = {}
    first: list[float] = []
    for start in ("zero", "burn-in"):
        state = scorer.initial_state()
        if start == "burn-in":
            state[:HIDDEN_SIZE] = burnt
        out = scorer.run(data.test, state)
        first.append(float(np.sqrt(out.sensor_error[:300, 0]).mean()))
        for w in warmups:
            run = replace(scorer.rule, warmup=w).run(out.anomaly_score, out.sensor_error, raw=data.test)
            tallies[f"{start}/{w}"] = count_metrics(run.detected, segs)
    return StartState(tallies, abs(first[0] - first[1]))


def _start_state_one(args: tuple[str, str, tuple[int, ...]]) -> StartState:
    return start_state_effect(Path(args[0]), args[1], args[2])


def print_start_state(ckpt_dir: Path, channels: list[str], warmups: tuple[int, ...], jobs: int) -> None:
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        per = list(tqdm(pool.map(_start_state_one, [(str(ckpt_dir), ch, warmups) for ch in channels]),
                        total=len(channels), desc="start state", unit="channel", file=sys.stderr))
    print(f"mean |error| of the value over the first 300 test rows, zero vs burnt-in GRU state: largest "
          f"difference over {len(channels)} channels {max(p.first_rows_gap for p in per):.4f}")
    for key in per[0].tallies:
        print(f"start/warm-up {key:12s} event TP/FP/FN, F1; point F1  "
              f"{table_row(aggregate([p.tallies[key] for p in per]))}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--variant", help="train every channel with this variant (needs --out)")
    mode.add_argument("--score", type=Path, metavar="DIR", help="score the errors a variant wrote to DIR")
    mode.add_argument("--start-state", type=Path, metavar="CKPT_DIR",
                      help="zero vs burnt-in GRU start state, and shorter warm-ups, on these checkpoints")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--channels", nargs="*", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if args.score:
        row = score_variant(args.score, args.jobs)
        print(" | ".join(f"{k}: {table_row(m)}" for k, m in row.items()))
        return
    if args.start_state:
        print_start_state(args.start_state, args.channels or default_source().channels(), (250, 100, 50, 0),
                          args.jobs)
        return
    if args.out is None:
        ap.error("--variant needs --out")
    print(asdict(Variant.parse(args.variant)), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    channels = args.channels or default_source().channels()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futs = [pool.submit(_run_one, ch, args.variant, str(args.out)) for ch in channels]
        for fut in as_completed(futs):
            ch, secs = fut.result()
            print(f"{ch} {secs:.1f}s", file=sys.stderr, flush=True)
    print(f"{len(channels)} channels in {time.perf_counter() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
