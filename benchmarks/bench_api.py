"""Operation server API benchmark: latency of the history routes over a 24 h window at the real SMAP cadence.

    .venv/bin/python benchmarks/bench_api.py [--requests 200] [--concurrency 1]

Imports 24 h at 30 s (2,880 points) of one entity (A-1: score, detected, threshold, detector signal, ground
truth, and value/reconstruction/error/ground truth of all 25 sensors) into a private VictoriaMetrics, starts
the operation server (its real entry point) against it, checks that a request returns all 2,880 points, then
times N requests of the overview and of one sensor (client-side wall time: HTTP + VictoriaMetrics queries +
JSON). Prints p50/p95/p99; asserts nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from smap_shared.operations.harness import OperationServer, Victoria

POINTS, STEP_S, SENSORS = 2880, 30, 25


def series_lines(end: int) -> list[str]:
    rng = np.random.default_rng(0)
    start = end - STEP_S * (POINTS - 1)
    stream = 'satellite_id="SAT-001",entity="A-1"'
    lines = []
    score = rng.gamma(2.0, 0.1, POINTS)
    for i in range(POINTS):
        ts = (start + STEP_S * i) * 1000
        anomalous = 1000 <= i < 1100
        lines += [
            f"smap_anomaly_score{{{stream}}} {score[i]!r} {ts}",
            f"smap_anomaly_detected{{{stream}}} {int(anomalous)} {ts}",
            f"smap_anomaly_threshold{{{stream}}} 0.5 {ts}",
            f"smap_detector_signal{{{stream}}} {score[i] * 2!r} {ts}",
            f"smap_ground_truth_anomaly{{{stream}}} {int(anomalous)} {ts}",
        ]
        values = rng.normal(0, 1, SENSORS)
        for s in range(SENSORS):
            lab = f'{stream},sensor="sensor_{s}"'
            rec = values[s] * 0.9
            lines += [
                f"smap_sensor_value{{{lab}}} {values[s]!r} {ts}",
                f"smap_sensor_reconstruction{{{lab}}} {rec!r} {ts}",
                f"smap_sensor_error{{{lab}}} {(values[s] - rec) ** 2!r} {ts}",
                f"smap_sensor_ground_truth{{{lab}}} {int(anomalous)} {ts}",
            ]
    return lines


async def timed(http: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            started = time.perf_counter()
            async with http.get(url) as resp:
                body = await resp.read()
                assert resp.status == 200, body[:200]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(n)))
    return latencies


def summary(name: str, latencies: list[float]) -> str:
    ms = np.array(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return (f"{name:<28} n={len(ms):4d}  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  p99 {p99:6.1f} ms  "
            f"mean {statistics.fmean(ms):6.1f} ms")


async def measure(server: str, end: int, n: int, concurrency: int) -> None:
    rng = f"start={end - STEP_S * (POINTS - 1)}&end={end}&step={STEP_S}s"
    routes = {
        "overview (24 h, 30 s)": f"{server}/api/smap/entity/A-1/overview?{rng}",
        "sensor_0 (24 h, 30 s)": f"{server}/api/smap/entity/A-1/sensor/sensor_0?{rng}",
    }
    async with aiohttp.ClientSession() as http:
        for name, url in routes.items():
            async with http.get(url) as resp:
                body = json.loads(await resp.read())
                size = resp.content_length
            column = body.get("anomaly_score") or body.get("actual")
            filled = sum(v is not None for v in column)
            print(f"{name}: {len(body['timestamps'])} timestamps, {filled} values, {size} bytes")
            assert len(body["timestamps"]) == POINTS == filled, (len(body["timestamps"]), filled)
            await timed(http, url, 10, 1)  # warm-up
            print(summary(name, await timed(http, url, n, concurrency)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        work = Path(tmp)
        vm = Victoria(work / "vm").start()
        server = None
        try:
            end = int(time.time()) // STEP_S * STEP_S - 60
            started = time.perf_counter()
            lines = series_lines(end)
            vm.import_lines(lines)
            print(f"imported {len(lines):,} samples ({POINTS} points x {len(lines) // POINTS} series) "
                  f"in {time.perf_counter() - started:.1f} s")
            server = OperationServer(work / "os", vm.url).start()
            asyncio.run(measure(server.url, end, args.requests, args.concurrency))
        finally:
            if server is not None:
                server.stop()
            vm.stop()


if __name__ == "__main__":
    main()
