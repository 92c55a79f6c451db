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

    python -m smap_shared.evaluation.experiments --variant fixed-w50-pred --out /work/eval-ckpt/x
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
from smap_shared.model.normalization import CLIP, Normalizer
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--channels", nargs="*", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
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
