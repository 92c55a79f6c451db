"""Chain benchmark: sustained end-to-end throughput and publish->result latency, with the direct Triton
client rate measured in the same run on the same server (their ratio is the number to watch).

    .venv/bin/python benchmarks/bench_chain.py [--steps 400] [--shards 2] [--checkpoints checkpoints]

Runs the real chain on private ports (smap_shared.infra.chain): Tansu, VictoriaMetrics, a RabbitMQ vhost,
Triton with the 9 fleet models, 2 worker shards, trigger and consumer; the simulator replays at full speed.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from smap_shared.data import VendoredSource
from smap_shared.fleet import default_fleet
from smap_shared.infra.chain import Chain
from smap_shared.model.train import TrainConfig, train_many
from smap_shared.schemas import InferenceResult
from smap_shared.streaming.kafka import ContiguousFetcher
from smap_shared.triton.client import OmniAnomalyClient


async def collect(bootstrap: str, want: int, timeout: float, out: list[tuple[float, InferenceResult]]) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer("smap-inference-results", bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await consumer.start()
    fetcher = ContiguousFetcher(consumer)
    try:
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            batch = await fetcher.getmany(timeout_ms=200)
            now = time.time()
            for msgs in batch.values():
                out.extend((now, InferenceResult.model_validate_json(m.value)) for m in msgs)
    finally:
        await consumer.stop()


def direct_rate(url: str, entities: list[str], steps: int) -> float:
    """One thread per entity, like the chain's shards, each streaming its own sequence."""
    source = VendoredSource()
    rows = {e: source.load(e).test[:steps] for e in entities}

    def run(e: str) -> None:
        c = OmniAnomalyClient(url)
        for i, r in enumerate(rows[e]):
            c.infer(e, r, f"direct/{e}", i)
        c.close()

    threads = [threading.Thread(target=run, args=(e,)) for e in entities]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(entities) * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400, help="steps per stream (9 streams)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--paced-steps", type=int, default=100)
    ap.add_argument("--paced-interval", type=float, default=0.2, help="seconds between ticks (9 frames)")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    args = ap.parse_args()
    fleet = default_fleet()
    entities = fleet.fleet_entities()
    missing = [e for e in entities if not (args.checkpoints / f"{e}.ckpt").exists()]
    if missing:
        train_many(missing, args.checkpoints, TrainConfig())
    chain = Chain(args.checkpoints, entities, Path(tempfile.mkdtemp(prefix="smap-chain-bench-")),
                  shards=args.shards)
    try:
        chain.start_infra()
        chain.start_triton()
        chain.start_services()
        time.sleep(8)  # let the workers and consumer join before the clock starts
        total = len(entities) * args.steps
        got: list[tuple[float, InferenceResult]] = []
        collector = threading.Thread(
            target=lambda: asyncio.run(collect(f"localhost:{chain.kafka_port}", total, 600, got)))
        collector.start()
        t0 = time.time()
        chain.run_simulator(0, args.steps)
        collector.join()
        wall = max(t for t, _ in got) - t0
        lat = [(t - r.timestamp.timestamp()) * 1000 for t, r in got]
        # steady state: drop the first and last 10% of arrivals
        stamps = sorted(t for t, _ in got)
        lo, hi = stamps[len(stamps) // 10], stamps[9 * len(stamps) // 10]
        sustained = (0.8 * len(stamps)) / (hi - lo) if hi > lo else float("nan")
        # paced phase: frames at a rate the chain keeps up with, so latency is the pipeline's, not a queue's
        paced: list[tuple[float, InferenceResult]] = []
        n_paced = len(entities) * args.paced_steps
        collector = threading.Thread(target=lambda: asyncio.run(
            collect(f"localhost:{chain.kafka_port}", total + n_paced, 600, paced)))
        collector.start()
        chain.run_simulator(args.steps, args.paced_steps, interval_s=args.paced_interval)
        collector.join()
        paced_lat = [(t - r.timestamp.timestamp()) * 1000 for t, r in paced if r.index >= args.steps]
        assert chain.triton is not None
        direct = direct_rate(chain.triton.url, entities, args.steps)
        p = np.percentile(lat, [50, 95, 99])
        print(f"chain: {len(got)} results for {total} frames ({len(entities)} streams x {args.steps}), "
              f"{args.shards} shards")
        print(f"chain end-to-end: {len(got) / wall:.0f} msg/s overall, {sustained:.0f} msg/s sustained "
              f"(middle 80%)")
        print(f"publish->result latency (frame timestamp to result consumed): p50 {p[0]:.0f} ms, "
              f"p95 {p[1]:.0f} ms, p99 {p[2]:.0f} ms (the simulator bursts all frames at once, so this "
              f"is mostly queueing)")
        q = np.percentile(paced_lat, [50, 95, 99])
        print(f"paced at {len(entities) / args.paced_interval:.0f} msg/s ({len(paced_lat)} frames): "
              f"publish->result latency p50 {q[0]:.0f} ms, p95 {q[1]:.0f} ms, p99 {q[2]:.0f} ms")
        print(f"direct Triton, {len(entities)} concurrent streams: {direct:.0f} req/s")
        print(f"ratio chain sustained / direct Triton: {sustained / direct:.2f} (design target >= 0.50)")
    finally:
        chain.stop()


if __name__ == "__main__":
    main()
