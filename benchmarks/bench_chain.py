"""Chain benchmark: sustained end-to-end throughput and publish->result latency, with the direct Triton
client rate measured in the same run on the same server (their ratio is the number to watch).

    .venv/bin/python benchmarks/bench_chain.py [--steps 400] [--shards 2] [--checkpoints checkpoints]

Runs the real chain on private ports (smap_shared.infra.chain): Tansu, VictoriaMetrics, a RabbitMQ vhost,
Triton with the 9 fleet models, 2 worker shards, trigger and consumer; the simulator replays at full speed.
Prints numbers; asserts nothing. It also prints where the CPU went during the full-speed phase (per process
tree, from /proc): on a small machine the chain's ceiling is the CPU its processes share, not Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def _cpu_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, name, user + system CPU seconds) of every live process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 (state)
        out[int(d.name)] = (int(f[1]), name, (int(f[11]) + int(f[12])) / tick)
    return out


def cpu_by_component(chain: Chain) -> dict[str, float]:
    """CPU seconds so far of each chain component (its process and live descendants), RabbitMQ's server
    and this process (the result collector) plus its reaped children (the simulator)."""
    table = _cpu_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)

    def tree(pid: int) -> float:
        return table.get(pid, (0, "", 0.0))[2] + sum(tree(c) for c in children.get(pid, []))

    roots = {name: p.pid for name, p in chain.procs.items() if p.poll() is None}
    if chain.triton is not None and chain.triton.pid is not None:
        roots["triton (+ model stubs)"] = chain.triton.pid
    out = {name: tree(pid) for name, pid in roots.items()}
    out["rabbitmq (whole server)"] = sum(c for _, n, c in table.values() if n == "beam.smp")
    t = os.times()
    out["bench collector"] = t.user + t.system
    out["simulator (reaped child)"] = t.children_user + t.children_system
    return out


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
        cpu0 = cpu_by_component(chain)
        chain.run_simulator(0, args.steps)
        collector.join()
        cpu1 = cpu_by_component(chain)
        wall = max(t for t, _ in got) - t0
        cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
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
        cores = os.cpu_count() or 1
        print(f"CPU during the full-speed phase ({wall:.1f} s wall, {cores} cores = {cores * wall:.0f} CPU s):")
        for name, secs in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {secs:6.1f} s  {100 * secs / wall:5.0f}% of a core  "
                  f"{1000 * secs / len(got):5.2f} ms per message")
        print(f"  {'all of the above':28s} {sum(cpu.values()):6.1f} s")
    finally:
        chain.stop()


if __name__ == "__main__":
    main()
