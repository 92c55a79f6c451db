"""Model-core benchmark: training time, tritonserver memory with all deployed models, direct Triton rate.

    .venv/bin/python benchmarks/bench_model.py [--skip-train --checkpoints checkpoints] [--requests 2000]

Prints numbers; asserts nothing (the machine is shared and noisy: compare ratios from one run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from smap_shared.data import VendoredSource
from smap_shared.fleet import default_fleet
from smap_shared.model.train import TrainConfig, train_many
from smap_shared.triton.client import OmniAnomalyClient
from smap_shared.triton.launcher import TritonServer
from smap_shared.triton.repository import generate


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """RSS of a process and all its descendants (the server and one python stub per model)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, count, todo = 0.0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
                    count += 1
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total, count


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_client(url: str, entity: str, rows: npt.NDArray[np.float64], stream: str, lat: list[float]) -> None:
    client = OmniAnomalyClient(url)
    for i, row in enumerate(rows):
        t = time.perf_counter()
        client.infer(entity, row, stream, i)
        lat.append((time.perf_counter() - t) * 1000)
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoints", type=Path, default=None, help="reuse these (with --skip-train)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--requests", type=int, default=2000, help="per client")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--http-port", type=int, default=18100)
    args = ap.parse_args()
    fleet = default_fleet()
    work = Path(tempfile.mkdtemp(prefix="smap-bench-"))
    ckpt_dir = args.checkpoints or work / "ckpt"
    print(f"cpus: {os.cpu_count()}  deployed models: {len(fleet.deployed)}")
    if not args.skip_train:
        t0 = time.perf_counter()
        train_many(list(fleet.deployed), ckpt_dir, TrainConfig())
        print(f"training: {len(fleet.deployed)} entities in {time.perf_counter() - t0:.1f} s wall "
              f"({TrainConfig().epochs} epochs, {os.cpu_count()} processes)")
    repo = work / "models"
    generate(repo, ckpt_dir, list(fleet.deployed), "KIND_CPU", "")
    port = args.http_port
    with TritonServer(repo, port, port + 1, port + 2, log_path=work / "triton.log") as server:
        t0 = time.perf_counter()
        server.wait_ready(300)
        print(f"tritonserver: {len(fleet.deployed)} models ready in {time.perf_counter() - t0:.1f} s")
        assert server.pid is not None
        rss, procs = tree_rss_mb(server.pid)
        print(f"tritonserver RSS with {len(fleet.deployed)} models: {rss:.0f} MB in {procs} processes "
              f"(target < 2048 MB)")
        source = VendoredSource()
        rows = {e: source.load(e).test[: args.requests] for e in fleet.deployed}
        lat: list[float] = []
        t0 = time.perf_counter()
        run_client(server.url, "A-1", rows["A-1"], "bench/single", lat)
        single = len(lat) / (time.perf_counter() - t0)
        print(f"direct Triton, 1 client: {single:.0f} req/s, p50 {pct(lat, 50):.2f} ms, "
              f"p99 {pct(lat, 99):.2f} ms")
        ents = list(fleet.deployed)[: args.concurrency]
        lats: list[list[float]] = [[] for _ in ents]
        threads = [
            threading.Thread(target=run_client, args=(server.url, e, rows[e], f"bench/c{i}", lats[i]))
            for i, e in enumerate(ents)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        flat = [x for la in lats for x in la]
        conc = len(flat) / wall
        print(f"direct Triton, {len(ents)} concurrent clients (one model each): {conc:.0f} req/s, "
              f"p50 {pct(flat, 50):.2f} ms, p99 {pct(flat, 99):.2f} ms, "
              f"mean {statistics.fmean(flat):.2f} ms; ratio concurrent/single {conc / single:.2f}")
        rss2, _ = tree_rss_mb(server.pid)
        print(f"tritonserver RSS after load: {rss2:.0f} MB")


if __name__ == "__main__":
    main()
