"""Per-row cost of a model's step in process (what Triton's Python backend runs), and of writing the stream
state through to Redis, with redis-py's pure-Python reply parser against hiredis, alternated in one run.

    .venv/bin/python benchmarks/bench_state_store.py [--redis redis://localhost:6379/15] [--requests 1000]

Load as in a 1,000-stream fleet: 50 streams per model, requests of 6 rows of different streams (a worker's
task of ~125 frames over 20 models). Prints numbers; asserts nothing (compare the ratios from one run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import redis
from redis._parsers import _HiredisParser, _RESP2Parser

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import Scorer
from smap_shared.model.streams import RedisStateStore, StateStore, StreamRegistry
from smap_shared.model.train import TrainConfig, train_entity

STREAMS, ROWS = 50, 6


def per_row_ms(ckpt: Checkpoint, data: npt.NDArray[np.float64], store: StateStore | None, requests: int) -> float:
    registry = StreamRegistry(Scorer(ckpt), store, 256)
    started = time.perf_counter()
    for r in range(requests):
        n = [r * ROWS + j for j in range(ROWS)]
        rows = np.stack([data[(k // STREAMS) % len(data)] for k in n])
        registry.step_many(rows, [f"SAT-{k % STREAMS:03d}/A-1" for k in n], [k // STREAMS for k in n])
    return (time.perf_counter() - started) / (requests * ROWS) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default="redis://localhost:6379/15")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    source = VendoredSource()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "A-1.ckpt"
        train_entity(source.load("A-1"), TrainConfig(epochs=1)).save(path)
        ckpt = Checkpoint.load(path)
    data = source.load("A-1").test
    got: dict[str, list[float]] = {"no store": [], "redis, Python parser": [], "redis, hiredis": []}
    for _ in range(args.reps):
        got["no store"].append(per_row_ms(ckpt, data, None, args.requests))
        for name, parser in (("redis, Python parser", _RESP2Parser), ("redis, hiredis", _HiredisParser)):
            store = RedisStateStore(args.redis, "bench_A-1", 256)
            store.r = redis.Redis.from_url(args.redis, parser_class=parser, socket_timeout=5)
            store.clear()
            got[name].append(per_row_ms(ckpt, data, store, args.requests))
            store.clear()
    base = statistics.median(got["no store"])
    print(f"{'per row (median of ' + str(args.reps) + ')':<28} {'ms':>8} {'state write ms':>15}")
    for name, values in got.items():
        ms = statistics.median(values)
        print(f"{name:<28} {ms:8.4f} {ms - base:15.4f}")
    py, hi = (statistics.median(got[k]) - base for k in ("redis, Python parser", "redis, hiredis"))
    print(f"state write, hiredis / Python parser: {hi / py:.2f}")


if __name__ == "__main__":
    main()
