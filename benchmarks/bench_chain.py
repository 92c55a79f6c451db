"""Chain benchmark: a constellation of S streams through the real micro-batched chain, paced and at full
speed, against the one-process pipeline on the same data in the same run (their ratio is the number to watch).

    .venv/bin/python benchmarks/bench_chain.py --streams S --rate-hz R --duration-s D [--tritons T]
        [--shards K] [--checkpoints DIR] [--full-steps N] [--warmup-steps W] --json PATH

The chain runs on private ports (smap_shared.infra.chain): Tansu, VictoriaMetrics, a RabbitMQ vhost, T Triton
servers with the models of the fleet's entities, K worker shards (shard k on Triton k mod T), trigger and
consumer. The fleet is ceil(S/20) satellites x the 20 deployed entities, cut to its first S streams (the
last satellite carries the first S mod 20 entities); each stream replays its entity's SMAP test split.
Missing (or outdated) checkpoints are trained into --checkpoints first.

The consumer writes to VictoriaMetrics through a small HTTP proxy in this process, which records when
VictoriaMetrics answered 2xx for each smap_anomaly_score sample of an import: that is the arrival time of a
frame (latency = that time - the frame's timestamp, throughput = frames arriving per second).

Phases (each waits until the previous one's frames are all in VictoriaMetrics):
- warm-up: W steps per stream at R Hz (consumer groups join, models warm up); not measured.
- paced: D*R steps per stream at R Hz, with every reader of the results topic running: the VictoriaMetrics
  consumer, smap-alert-manager (a throwaway PostgreSQL database smap_bench_<runid>, dropped at the end) and
  smap-operation-server with one WebSocket client on /ws/smap. Reports frames sent and stored (read back
  from VictoriaMetrics' export, each (series, timestamp) once), frame -> VictoriaMetrics 2xx latency (and,
  from a group-less reader of the results topic in this process, the frame -> results-topic part of it),
  and each reader's lag when the simulator ends and once it settled: committed offset vs the results
  topic's end for the two consumer groups (the alert manager's offsets are its PostgreSQL consumer_offsets
  rows), WebSocket messages received vs results produced since it connected.
- full speed: the alert manager and the operation server are stopped; N steps per stream at interval 0;
  sustained frames/s (middle 80% of arrivals) and CPU per frame of the chain's processes (from /proc).
- baseline: the same S x N frames pre-filled into topic bench-baseline-telemetry of the same broker, read by
  one process (aiokafka, validate, per-entity waves of Scorer.step_many, result_lines, one import per batch
  into a second private VictoriaMetrics, manual commit after each 2xx).

JSON (--json): streams, rate_hz, tritons, shards, cores; paced.{frames_sent, frames_stored, duplicate_samples,
latency_ms, latency_to_results_topic_ms, lag, cpu_ms_per_frame, cpu}; full_speed.{frames_per_s (middle 80%),
frames_per_s_overall, frames_stored, cpu_ms_per_frame, cpu}; baseline.{frames_per_s, cpu_ms_per_frame};
ratio_full_speed_vs_baseline. CPU per frame sums the chain's processes (simulator, Tansu, trigger, RabbitMQ,
workers, Triton, Redis, consumer, VictoriaMetrics; in the paced phase also the readers and PostgreSQL), not
this process (proxy, collectors); RabbitMQ, Redis and PostgreSQL are measured whole (other users count).

Prints numbers and writes them as JSON; asserts nothing. Every process it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from aiohttp import web

from smap_shared.data import default_source
from smap_shared.fleet import default_fleet, load_fleet
from smap_shared.infra.chain import Chain
from smap_shared.infra.ports import free_port
from smap_shared.infra.procs import descendants, proc_table
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.contract import ModelOutputs
from smap_shared.model.scorer import Scorer
from smap_shared.model.streams import RedisStateStore
from smap_shared.model.train import TrainConfig, train_many, up_to_date
from smap_shared.operations.harness import Victoria
from smap_shared.schemas import InferenceTask
from smap_shared.streaming.consumer import IMPORT_PATH, result_lines
from smap_shared.streaming.kafka import ContiguousFetcher
from smap_shared.streaming.simulator import StreamReplay
from smap_shared.streaming.validation import Invalid, entity_widths, validate_telemetry
from smap_shared.streaming.worker import build_result

RESULTS_TOPIC = "smap-inference-results"
CONSUMER_GROUP = "smap-victoria-consumer"
ALERT_GROUP = "smap-alert-manager"
BASELINE_TOPIC = "bench-baseline-telemetry"
PG_SERVER = os.environ.get("SMAP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
ENTITIES_PER_SATELLITE = 20
SCORE_LINE = re.compile(rb"^smap_anomaly_score\{([^}]*)\} \S+ (\d+)\s*$", re.MULTILINE)
#: CPU rows that are not the chain: this process (proxy, WebSocket client, collectors, the baseline).
BENCH_ROW = "bench process (VM proxy, collectors)"
PROGRESS_EVERY_S = 5.0

Array = npt.NDArray[np.float64]


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal, else a progress line every few seconds."""

    def __init__(self, desc: str, total: int) -> None:
        self.desc, self.total, self.n = desc, total, 0
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, mininterval=1.0)

    def update_to(self, n: int) -> None:
        self.n = n
        now = time.monotonic()
        if self.bar is not None:
            self.bar.n = min(n, self.total)
            self.bar.refresh()
        elif now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = n / (now - self.started) if now > self.started else 0.0
            print(f"  [{self.desc}] {n}/{self.total} frames in VictoriaMetrics, {now - self.started:.0f} s "
                  f"({rate:.0f}/s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def wait_frames(desc: str, total: int, count: Callable[[], int], *, timeout_s: float, stall_s: float,
                on_poll: Callable[[], None] | None = None) -> int:
    """Poll `count()` until it reaches `total`, `timeout_s` passes or nothing new came for `stall_s`."""
    bar = Progress(desc, total)
    deadline = time.monotonic() + timeout_s
    last_n, last_change = -1, time.monotonic()
    try:
        while True:
            n = count()
            bar.update_to(n)
            if on_poll is not None:
                on_poll()
            now = time.monotonic()
            if n != last_n:
                last_n, last_change = n, now
            if n >= total:
                return n
            if now >= deadline or now - last_change >= stall_s:
                print(f"  [{desc}] gave up at {n}/{total} frames (timeout or no progress for {stall_s:.0f} s)")
                return n
            time.sleep(0.25)
    finally:
        bar.close()


# ---------------------------------------------------------------- fleet


def bench_fleet(path: Path, streams: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A fleet file with the first `streams` streams of ceil(streams/20) satellites x the deployed entities;
    returns the entities it uses and its (satellite, entity) streams."""
    deployed = list(default_fleet().deployed)[:ENTITIES_PER_SATELLITE]
    per_sat = len(deployed)
    n_sats = math.ceil(streams / per_sat)
    sats: list[tuple[str, list[str]]] = []
    for k in range(n_sats):
        take = min(per_sat, streams - k * per_sat)
        sats.append((f"SAT-{k + 1:03d}", deployed[:take]))
    used = deployed[: min(streams, per_sat)]

    def quoted(items: Iterable[str]) -> str:
        return ", ".join(f'"{e}"' for e in items)

    body = [f"deployed = [{quoted(used)}]"]
    body += [f'[[satellites]]\nid = "{sat}"\nentities = [{quoted(ents)}]' for sat, ents in sats]
    path.write_text("\n".join(body) + "\n")
    fleet = load_fleet(path)  # validate it as the services will
    return used, fleet.streams()


# ---------------------------------------------------------------- CPU from /proc


#: shared servers the chain uses, measured whole (by process name): other users count too
SYSTEM_SERVERS = {"rabbitmq (whole server)": ("beam.smp",), "redis (whole server)": ("redis-server",),
                  "postgresql (whole server)": ("postgres",)}


def cpu_by_component(chain: Chain, extra: dict[str, int] | None = None) -> dict[str, float]:
    """CPU seconds so far of each chain component (its process and live descendants), the shared servers,
    this process, and this process's reaped children (the simulator runs)."""
    table = proc_table()

    def tree(pid: int) -> float:
        return sum(table[p].cpu_s for p in descendants(pid, table) if p in table)

    roots = {name: p.pid for name, p in chain.procs.items() if p.poll() is None}
    for k, server in enumerate(chain.servers):
        if server.pid is not None:
            roots[f"triton{'' if k == 0 else k} (+ model stubs)"] = server.pid
    roots.update(extra or {})
    out = {name: tree(pid) for name, pid in roots.items()}
    for row, names in SYSTEM_SERVERS.items():
        out[row] = sum(p.cpu_s for p in table.values() if p.name in names)
    t = os.times()
    out[BENCH_ROW] = t.user + t.system
    out["simulator (reaped child)"] = t.children_user + t.children_system
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after[k] - before.get(k, 0.0)) for k in after}


def cpu_rows(cpu: dict[str, float], wall_s: float, frames: int, exclude: Iterable[str]) -> dict[str, Any]:
    """The CPU table as JSON: per component seconds, % of a core and ms per frame; `chain_ms_per_frame` sums
    every row but the excluded ones."""
    skip = set(exclude)
    rows = {name: {"cpu_s": round(s, 3), "pct_of_core": round(100 * s / wall_s, 1) if wall_s > 0 else None,
                   "ms_per_frame": round(1000 * s / frames, 4) if frames else None}
            for name, s in sorted(cpu.items(), key=lambda kv: -kv[1])}
    chain_s = sum(s for name, s in cpu.items() if name not in skip)
    return {"wall_s": round(wall_s, 3), "components": rows, "chain_cpu_s": round(chain_s, 3),
            "chain_ms_per_frame": round(1000 * chain_s / frames, 4) if frames else None,
            "excluded_from_chain": sorted(skip & set(cpu))}


def print_cpu(title: str, table: dict[str, Any], frames: int) -> None:
    wall = table["wall_s"]
    cores = os.cpu_count() or 1
    print(f"  CPU {title} ({wall:.1f} s wall, {cores} cores = {cores * wall:.0f} CPU s, {frames} frames):")
    for name, row in table["components"].items():
        mark = "  (not in the chain's sum)" if name in table["excluded_from_chain"] else ""
        pct = row["pct_of_core"] if row["pct_of_core"] is not None else float("nan")
        ms = row["ms_per_frame"] if row["ms_per_frame"] is not None else float("nan")
        print(f"    {name:38s} {row['cpu_s']:7.2f} s  {pct:5.0f}% of a core  {ms:6.3f} ms/frame{mark}")
    per_frame = table["chain_ms_per_frame"] or 0.0
    print(f"    {'chain total':38s} {table['chain_cpu_s']:7.2f} s  {per_frame:.3f} ms/frame")


# ---------------------------------------------------------------- the VictoriaMetrics proxy


class VictoriaProxy:
    """HTTP proxy in front of VictoriaMetrics, in a thread of this process. For every import VictoriaMetrics
    answered 2xx it records, per smap_anomaly_score sample (series labels, timestamp ms), the time of the
    first such answer."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.first_ok: dict[tuple[bytes, int], float] = {}
        self.reimported = 0  # samples VictoriaMetrics accepted again (a redelivered batch)
        self.imports = 0
        self.failed_imports = 0
        self.upstream_s = 0.0  # time VictoriaMetrics took to answer the imports it accepted
        self.handler_s = 0.0  # time from the proxy's first look at an import to its answer
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._serve, name="vm-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaProxy:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"VictoriaMetrics proxy did not start: {self._error!r}")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _setup(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        t0 = time.perf_counter()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "content-encoding")}
        t1 = time.perf_counter()
        try:
            async with self._session.request(request.method, self.target + request.path_qs, data=body or None,
                                             headers=headers) as resp:
                payload = await resp.read()
                ok_at = time.time()
                status = resp.status
                out_headers = {k: v for k, v in resp.headers.items() if k.lower() == "content-type"}
        except (aiohttp.ClientError, TimeoutError) as exc:
            if request.path == IMPORT_PATH:
                self.failed_imports += 1
            return web.Response(status=502, text=f"proxy: VictoriaMetrics unreachable: {exc!r}")
        if request.path == IMPORT_PATH:
            if 200 <= status < 300:
                self._record(body, ok_at)
                self.upstream_s += time.perf_counter() - t1
                self.handler_s += time.perf_counter() - t0
            else:
                self.failed_imports += 1
        return web.Response(status=status, body=payload, headers=out_headers)

    def _record(self, body: bytes, ok_at: float) -> None:
        samples = SCORE_LINE.findall(body)
        with self._lock:
            self.imports += 1
            for labels, ts in samples:
                key = (labels, int(ts))
                if key in self.first_ok:
                    self.reimported += 1
                else:
                    self.first_ok[key] = ok_at

    def count(self) -> int:
        return len(self.first_ok)

    def timing(self) -> tuple[int, float, float]:
        return self.imports, self.upstream_s, self.handler_s

    def timing_since(self, before: tuple[int, float, float]) -> dict[str, Any]:
        """Imports since `before`, the mean time VictoriaMetrics took to answer one, and the mean time the
        proxy held one (reading the body, forwarding, recording)."""
        n = self.imports - before[0]
        return {"imports": n,
                "vm_ms": round(1000 * (self.upstream_s - before[1]) / n, 1) if n else None,
                "proxy_ms": round(1000 * (self.handler_s - before[2]) / n, 1) if n else None}

    def arrivals(self, start_ms: int, end_ms: int) -> list[tuple[int, float]]:
        """(frame timestamp ms, first 2xx time) of the frames stamped in [start_ms, end_ms]."""
        with self._lock:
            return [(ts, t) for (_, ts), t in self.first_ok.items() if start_ms <= ts <= end_ms]

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ---------------------------------------------------------------- the WebSocket client


class LiveCounter:
    """One WebSocket client of the operation server's /ws/smap, counting what it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results = 0
        self.alerts = 0
        self.other = 0
        self.close_code: int | None = None
        self.error: str | None = None
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ws-client", daemon=True)

    def start(self, timeout_s: float = 30) -> LiveCounter:
        self._thread.start()
        if not self.connected.wait(timeout_s):
            raise RuntimeError(f"WebSocket {self.url} did not connect: {self.error}")
        return self

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(self.url) as ws:
                self._ws = ws
                hello = await ws.receive_json(timeout=10)
                if hello.get("type") != "subscribed":
                    raise RuntimeError(f"unexpected first message {hello}")
                self.connected.set()
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    text: str = msg.data
                    if text.startswith('{"type":"smap_inference"'):
                        self.results += 1
                    else:
                        kind = json.loads(text).get("type")
                        if kind == "smap_inference":
                            self.results += 1
                        elif kind == "smap_alert":
                            self.alerts += 1
                        else:
                            self.other += 1
                self.close_code = ws.close_code
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.connected.set()

    def stop(self) -> None:
        if self._loop is not None and self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(10)
        self._thread.join(10)


class ResultsTap:
    """A group-less reader of the results topic in a thread, from its end when started: when each result
    (stream, index) was first produced there (the record's CreateTime, stamped by the worker's producer), for
    the frame -> results-topic part of the latency. Reading the time from the record, not from this reader's
    clock, lets it poll slowly: an instrument polling every 20 ms cost the broker ~5 % of a core."""

    FETCH_MAX_WAIT_MS = 500

    STAMP = re.compile(rb'"timestamp":"([^"]+)"')
    INDEX = re.compile(rb'"index":(\d+)')

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.first: dict[tuple[bytes, int], tuple[float, float]] = {}  # -> (frame timestamp s, arrival)
        self.ready = threading.Event()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="results-tap", daemon=True)

    def start(self) -> ResultsTap:
        self._thread.start()
        if not self.ready.wait(30):
            raise RuntimeError(f"results tap did not start: {self.error}")
        return self

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(RESULTS_TOPIC, bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="latest",
                                    fetch_max_wait_ms=self.FETCH_MAX_WAIT_MS)
        try:
            await consumer.start()
            for tp in consumer.assignment():
                await consumer.position(tp)  # pin "latest" now
            self.ready.set()
            fetcher = ContiguousFetcher(consumer)
            while not self._stop.is_set():
                batch = await fetcher.getmany(timeout_ms=1000, max_records=5000)
                for records in batch.values():
                    for rec in records:
                        stamp, index = self.STAMP.search(rec.value), self.INDEX.search(rec.value)
                        if stamp is None or index is None:
                            continue
                        key = (rec.key or b"", int(index.group(1)))
                        if key not in self.first:
                            ts = datetime.fromisoformat(stamp.group(1).decode()).timestamp()
                            self.first[key] = (ts, rec.timestamp / 1000)
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.ready.set()
            await consumer.stop()

    def latencies_ms(self, start_ms: int, end_ms: int) -> list[float]:
        return [(t - ts) * 1000 for ts, t in list(self.first.values()) if start_ms <= ts * 1000 <= end_ms]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


# ---------------------------------------------------------------- readers' lag


async def _topic_offsets(bootstrap: str, topic: str, group: str | None
                         ) -> tuple[dict[int, int | None], dict[int, int]]:
    """Per partition of `topic`: the offset `group` committed (None: nothing; {} without a group) and its end.

    The end is the high watermark of a fetch, not ListOffsets: Tansu answers ListOffsets(latest) with the
    last record batch's base offset + 1, short of the end by the rest of that batch (seen here: 1 for a
    partition holding one 31-record batch)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        committed = {tp.partition: await consumer.committed(tp) for tp in tps} if group else {}
        listed = await consumer.end_offsets(tps) if tps else {}
        end = {tp.partition: 0 for tp in tps if listed[tp] == 0}  # no batch at all
        todo = [tp for tp in tps if listed[tp] > 0]
        if todo:
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, listed[tp] - 1)  # inside the last batch: the fetch answers with the watermark
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in todo):
                await consumer.getmany(*todo, timeout_ms=100)
            for tp in todo:
                hw = consumer.highwater(tp)
                end[tp.partition] = max(listed[tp], hw if hw is not None else 0)
    finally:
        await consumer.stop()
    return committed, end


def _pg_offsets(url: str, group: str, topic: str) -> dict[int, int]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s "
                            "AND topic = %s", (group, topic)).fetchall()
    return {int(p): int(o) for p, o in rows}


@dataclass
class Readers:
    """The readers of the results topic during the paced phase and how to ask each for its position."""

    bootstrap: str
    alert_db: str | None = None
    live: LiveCounter | None = None
    ws_base: int = 0  # the results topic's end (summed over partitions) when the WebSocket connected

    def results_end(self) -> int:
        return sum(asyncio.run(_topic_offsets(self.bootstrap, RESULTS_TOPIC, None))[1].values())

    def lag(self) -> dict[str, dict[str, Any]]:
        committed, end = asyncio.run(_topic_offsets(self.bootstrap, RESULTS_TOPIC, CONSUMER_GROUP))
        end_total = sum(end.values())
        out: dict[str, dict[str, Any]] = {
            CONSUMER_GROUP: {"committed": sum(c or 0 for c in committed.values()), "end": end_total,
                             "lag": sum(e - (committed.get(p) or 0) for p, e in end.items())},
        }
        if self.alert_db is not None:
            try:
                stored = _pg_offsets(self.alert_db, ALERT_GROUP, RESULTS_TOPIC)
                out[ALERT_GROUP] = {"committed": sum(stored.values()), "end": end_total,
                                    "lag": sum(e - stored.get(p, 0) for p, e in end.items()),
                                    "where": "PostgreSQL consumer_offsets"}
            except Exception as exc:
                out[ALERT_GROUP] = {"error": repr(exc)}
        if self.live is not None:
            produced = end_total - self.ws_base
            out["websocket /ws/smap"] = {"received": self.live.results, "produced": produced,
                                         "lag": produced - self.live.results, "alerts_received": self.live.alerts,
                                         "closed": self.live.close_code, "error": self.live.error}
        return out


def lag_line(lag: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} {v.get('lag', v.get('error'))}" for name, v in lag.items())


# ---------------------------------------------------------------- VictoriaMetrics read-back


def vm_samples(vm_url: str, start_ms: int, end_ms: int) -> dict[str, int]:
    """smap_anomaly_score samples stamped in [start_ms, end_ms]: total, distinct (series, timestamp), and
    duplicates (the same series and timestamp more than once)."""
    with urllib.request.urlopen(f"{vm_url}/internal/force_flush", timeout=30):
        pass
    q = urllib.parse.urlencode({"match[]": "smap_anomaly_score", "start": f"{start_ms / 1000:.3f}",
                                "end": f"{end_ms / 1000:.3f}"})
    total = distinct = series = 0
    with urllib.request.urlopen(f"{vm_url}/api/v1/export?{q}", timeout=300) as resp:
        for line in resp:
            if not line.strip():
                continue
            row = json.loads(line)
            stamps = row.get("timestamps", [])
            series += 1
            total += len(stamps)
            distinct += len(set(stamps))
    return {"samples": total, "distinct": distinct, "duplicates": total - distinct, "series": series}


def vm_samples_settled(vm_url: str, start_ms: int, end_ms: int, expected: int, timeout_s: float = 30
                       ) -> dict[str, int]:
    """vm_samples, read again (1 s apart, at most `timeout_s`) until it holds `expected` distinct samples or
    stops growing: samples imported the moment before can take a few seconds to become searchable, so a
    single read right after a catching-up consumer undercounts what VictoriaMetrics stored."""
    deadline = time.monotonic() + timeout_s
    stored = vm_samples(vm_url, start_ms, end_ms)
    while stored["distinct"] < expected and time.monotonic() < deadline:
        time.sleep(1.0)
        again = vm_samples(vm_url, start_ms, end_ms)
        if again["distinct"] == stored["distinct"] and again["samples"] == stored["samples"]:
            time.sleep(2.0)  # twice the same: one more look after a longer pause, then believe it
            again = vm_samples(vm_url, start_ms, end_ms)
            if again == stored:
                return stored
        stored = again
    return stored


def _ms(t: float) -> int:
    return int(t * 1000)


def sustained_rate(times: list[float]) -> float:
    """Frames per second over the middle 80% of the arrival times."""
    if len(times) < 10:
        return float("nan")
    s = sorted(times)
    lo, hi = len(s) // 10, 9 * len(s) // 10
    return (hi - lo) / (s[hi] - s[lo]) if s[hi] > s[lo] else float("nan")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    p = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p[0]), 1), "p95": round(float(p[1]), 1), "p99": round(float(p[2]), 1),
            "max": round(max(values), 1), "n": len(values)}


def simulator_frames(log: Path) -> int | None:
    """Frames of the last simulator run, from its log line "simulator done: N ticks, M frames"."""
    try:
        found = re.findall(r"simulator done: \d+ ticks, (\d+) frames", log.read_text(errors="replace"))
    except OSError:
        return None
    return int(found[-1]) if found else None


# ---------------------------------------------------------------- the chain and the readers


@dataclass
class BenchChain(Chain):
    """The chain, with VICTORIA_URL of the services pointing at the proxy when one is set."""

    victoria_override: str | None = None
    simulator_phase: str = "spread"

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        env.setdefault("SIMULATOR_PHASE", self.simulator_phase)
        if self.victoria_override is not None and "VICTORIA_URL" not in extra:
            env["VICTORIA_URL"] = self.victoria_override
        return env


def scrape(port: int) -> dict[str, float]:
    """A service's /metrics as {sample name{labels}: value} (counters and histogram sums/counts)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if not s.name.endswith("_bucket"):
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def stage_snapshot(chain: Chain) -> dict[str, dict[str, float]]:
    return {name: scrape(port) for name, port in chain.metrics_ports.items()
            if name.startswith(("worker-shard", "trigger", "consumer"))}


def stage_report(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per worker shard over a phase: tasks, frames per task, and the mean seconds of a task's stages (the
    serial path of a shard: one task at a time); for the trigger, frames per published task."""

    def d(name: str, key: str) -> float:
        return after.get(name, {}).get(key, 0.0) - before.get(name, {}).get(key, 0.0)

    out: dict[str, Any] = {}
    for name in sorted(after):
        if name.startswith("worker-shard"):
            tasks = d(name, "smap_worker_batch_seconds_count{}")
            if tasks <= 0:
                continue
            calls = d(name, "smap_worker_inference_seconds_count{}")
            frames = d(name, "smap_worker_frames_total{outcome=result}") + d(
                name, "smap_worker_frames_total{outcome=dead_letter}")
            out[name] = {
                "tasks": int(tasks), "frames_per_task": round(frames / tasks, 1),
                "task_ms": round(1000 * d(name, "smap_worker_batch_seconds_sum{}") / tasks, 1),
                "triton_ms": round(1000 * d(name, "smap_worker_inference_seconds_sum{}") / calls, 1)
                if calls else None,
                "kafka_ms": round(1000 * d(name, "smap_worker_kafka_publish_seconds_sum{}") / tasks, 1),
                "busy_share": None,  # filled by the caller with the phase's wall time
            }
        elif name == "trigger":
            n = d(name, "smap_trigger_batch_frames_count{}")
            per_task = round(d(name, "smap_trigger_batch_frames_sum{}") / n, 1) if n else None
            out[name] = {"tasks": int(n), "frames_per_task": per_task}
        elif name == "consumer":
            n = d(name, "smap_consumer_import_seconds_count{}")
            results = d(name, "smap_consumer_messages_total{outcome=valid}")
            out[name] = {"imports": int(n), "results_per_import": round(results / n, 1) if n else None,
                         "import_ms": round(1000 * d(name, "smap_consumer_import_seconds_sum{}") / n, 1)
                         if n else None}
    return out


def print_stages(stages: dict[str, Any]) -> None:
    for name, s in stages.items():
        if name.startswith("worker-shard"):
            print(f"  {name}: {s['tasks']} tasks of {s['frames_per_task']} frames; a task {s['task_ms']} ms "
                  f"(Triton {s['triton_ms']} ms, Kafka acked {s['kafka_ms']} ms), busy {s['busy_share']:.0%}")
        elif name == "vm-proxy":
            print(f"  {name}: {s['imports']} imports; VictoriaMetrics answered in {s['vm_ms']} ms, the proxy "
                  f"held one {s['proxy_ms']} ms")
        elif name == "consumer":
            print(f"  {name}: {s['imports']} VictoriaMetrics imports of {s['results_per_import']} results, "
                  f"an import {s['import_ms']} ms")
        else:
            print(f"  {name}: {s['tasks']} tasks of {s['frames_per_task']} frames")


def _http_ok(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read() or b"{}")
            return body
    except (OSError, ValueError):
        return None


def wait_http(chain: Chain, name: str, url: str, timeout_s: float, ok: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = chain.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {chain.logs / (name + '.log')}")
        body = _http_ok(url)
        if body is not None and ok(body):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s; see {chain.logs / (name + '.log')}")


def start_alert_manager(chain: Chain, db_url: str) -> str:
    api_port = free_port()
    chain._spawn("alert-manager", [sys.executable, "smap-alert-manager/main.py"], env=chain.env(
        ALERT_DATABASE_URL=db_url, ALERT_API_HOST="127.0.0.1", ALERT_API_PORT=str(api_port), SMAP_AUTH="off",
        SLACK_WEBHOOK_URL="", SMTP_HOST="", ALERT_EMAIL_TO=""))
    wait_http(chain, "alert-manager", f"http://127.0.0.1:{api_port}/healthz", 90, lambda _: True)
    return f"http://127.0.0.1:{api_port}"


def start_operation_server(chain: Chain, alert_api: str) -> str:
    port = free_port()
    chain._spawn("operation-server", [sys.executable, "smap-operation-server/main.py"], env=chain.env(
        OPERATION_HOST="127.0.0.1", OPERATION_PORT=str(port), ALERT_MANAGER_URL=alert_api, SMAP_AUTH="off"))
    wait_http(chain, "operation-server", f"http://127.0.0.1:{port}/healthz", 90,
              lambda body: body.get("live_feed") == "connected")
    return f"ws://127.0.0.1:{port}/ws/smap"


def stop_reader(chain: Chain, name: str) -> None:
    from smap_shared.infra.chain import stop_process

    proc = chain.procs.pop(name, None)
    if proc is not None:
        stop_process(proc)


# ---------------------------------------------------------------- baseline: the one-process pipeline


async def fill_baseline_topic(bootstrap: str, replays: list[StreamReplay], start: int, steps: int) -> int:
    """The frames the full-speed phase sent (same streams, rows and order), one tick per millisecond."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-baseline-filler", acks="all",
                                linger_ms=5)
    await producer.start()
    base_ms = _ms(time.time()) - steps - 60_000
    sent = 0
    try:
        futures = []
        for k in range(steps):
            stamp = datetime.fromtimestamp((base_ms + k) / 1000, UTC)
            for r in replays:
                msg = r.frame(start + k, stamp)
                futures.append(await producer.send(BASELINE_TOPIC, value=msg.model_dump_json().encode(),
                                                   key=r.stream_id.encode()))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                sent += len(futures)
                futures = []
        await asyncio.gather(*futures)
        sent += len(futures)
    finally:
        await producer.stop()
    return sent


@dataclass
class BaselineStats:
    frames: int = 0
    invalid: int = 0
    imports: int = 0
    first_fetch: float | None = None
    last_commit: float | None = None
    arrivals: list[float] = field(default_factory=list)  # one per frame: its import's 2xx time


def _outputs(out: Any) -> ModelOutputs:
    return ModelOutputs(reconstruction=out.reconstruction, anomaly_score=out.anomaly_score,
                        anomaly_detected=out.anomaly_detected, sensor_error=out.sensor_error,
                        threshold=out.threshold, detector_signal=out.detector_signal, alarm_cause=out.alarm_cause,
                        duplicate=False, gap=0)


async def run_baseline(bootstrap: str, vm_url: str, scorers: dict[str, Scorer], fleet_file: Path, total: int,
                       batch_max: int, timeout_s: float) -> BaselineStats:
    """Consume the pre-filled topic: validate, score (waves of Scorer.step_many per entity, per-stream state in
    a dict), build results and their lines, import each batch, commit after the 2xx."""
    from aiokafka import AIOKafkaConsumer

    fleet = load_fleet(fleet_file)
    widths = entity_widths(fleet, default_source(None))
    states: dict[str, Array] = {}
    stats = BaselineStats()
    consumer = AIOKafkaConsumer(BASELINE_TOPIC, bootstrap_servers=bootstrap,
                                group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20, max_poll_records=batch_max)
    await consumer.start()
    fetcher = ContiguousFetcher(consumer)
    bar = Progress("baseline", total)
    url = vm_url.rstrip("/") + IMPORT_PATH
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            deadline = time.monotonic() + timeout_s
            while stats.frames + stats.invalid < total and time.monotonic() < deadline:
                batch = await fetcher.getmany(timeout_ms=200, max_records=batch_max)
                if not batch:
                    continue
                if stats.first_fetch is None:
                    stats.first_fetch = time.time()
                tasks: list[InferenceTask] = []
                offsets = {}
                for tp, records in batch.items():
                    offsets[tp] = records[-1].offset + 1
                    for rec in records:
                        msg = validate_telemetry(rec.value, fleet, widths)
                        if isinstance(msg, Invalid):
                            stats.invalid += 1
                            continue
                        tasks.append(InferenceTask.from_telemetry(msg))
                outputs: dict[int, ModelOutputs] = {}
                took_ms: dict[str, float] = {}
                by_entity: dict[str, dict[str, list[int]]] = {}
                for pos, t in enumerate(tasks):
                    by_entity.setdefault(t.entity, {}).setdefault(t.stream_id, []).append(pos)
                for entity, per_stream in by_entity.items():
                    scorer = scorers[entity]
                    started = time.perf_counter()
                    for depth in range(max(len(p) for p in per_stream.values())):
                        wave = [(p[depth], sid) for sid, p in per_stream.items() if depth < len(p)]
                        rows = np.array([tasks[p].sensor_values for p, _ in wave], dtype=np.float64)
                        hidden = np.stack([states[sid] if sid in states else scorer.initial_state()
                                           for _, sid in wave])
                        for (p, sid), (out, new_state) in zip(wave, scorer.step_many(rows, hidden), strict=True):
                            states[sid] = new_state
                            outputs[p] = _outputs(out)
                    took_ms[entity] = (time.perf_counter() - started) * 1000
                lines: list[str] = []
                for pos, t in enumerate(tasks):
                    lines.extend(result_lines(build_result(t, outputs[pos], took_ms[t.entity])))
                if lines:
                    async with http.post(url, data=("\n".join(lines) + "\n").encode()) as resp:
                        if not 200 <= resp.status < 300:
                            raise RuntimeError(f"baseline import: VictoriaMetrics answered {resp.status}")
                await consumer.commit(offsets)
                now = time.time()
                stats.imports += 1
                stats.frames += len(tasks)
                stats.last_commit = now
                stats.arrivals.extend([now] * len(tasks))
                bar.update_to(stats.frames)
    finally:
        bar.close()
        await consumer.stop()
    return stats


# ---------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, required=True, help="streams S (ceil(S/20) satellites x 20 entities)")
    ap.add_argument("--rate-hz", type=float, required=True, help="paced phase: frames per second per stream")
    ap.add_argument("--duration-s", type=float, required=True, help="paced phase length (steps = rate x duration)")
    ap.add_argument("--tritons", type=int, default=1, help="Triton servers (worker shard k uses server k mod T)")
    ap.add_argument("--shards", type=int, default=2, help="worker shards")
    ap.add_argument("--phase", choices=["spread", "together"], default="spread",
                    help="paced phase: each satellite at its own phase of the interval (spread, as independent "
                    "spacecraft) or every stream at the start of each tick (together: the worst burst)")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--json", type=Path, required=True, help="where to write the numbers")
    ap.add_argument("--full-steps", type=int, default=100, help="full-speed phase: steps per stream")
    ap.add_argument("--warmup-steps", type=int, default=5, help="paced steps per stream before measuring")
    ap.add_argument("--baseline-batch", type=int, default=1000, help="baseline: records per fetch and import")
    ap.add_argument("--redis-db", type=int, default=14, help="Redis database for the models' stream state")
    ap.add_argument("--settle-s", type=float, default=30, help="after the paced phase: wait this long at most "
                    "for every reader's lag to reach 0")
    ap.add_argument("--workdir", type=Path, default=None, help="logs and data (default: a new temp folder)")
    args = ap.parse_args(argv)
    if args.streams < 1 or args.rate_hz <= 0 or args.duration_s <= 0 or args.full_steps < 1:
        ap.error("--streams, --rate-hz, --duration-s and --full-steps must be positive")
    return args


def ensure_checkpoints(checkpoints: Path, entities: list[str]) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    stale = [e for e in entities if not up_to_date(checkpoints / f"{e}.ckpt")]
    if stale:
        print(f"training {len(stale)} checkpoints into {checkpoints}: {', '.join(stale)}", flush=True)
        train_many(stale, checkpoints, TrainConfig())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    S = args.streams
    paced_steps = max(1, round(args.rate_hz * args.duration_s))
    interval = 1.0 / args.rate_hz
    warm, full = args.warmup_steps, args.full_steps
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="smap-chain-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet_file = workdir / "fleet.toml"
    entities, streams = bench_fleet(fleet_file, S)
    source = default_source(None)
    shortest = min(source.load(e).test.shape[0] for e in entities)
    if warm + paced_steps + full > shortest:
        print(f"warning: {warm + paced_steps + full} steps per stream exceed the shortest test split ({shortest} "
              "rows): those streams stop early")
    ensure_checkpoints(args.checkpoints, entities)
    cores = os.cpu_count() or 1
    n_sats = math.ceil(S / ENTITIES_PER_SATELLITE)
    print(f"== bench_chain: {S} streams ({n_sats} satellites x up to {len(entities)} entities), {args.shards} "
          f"shards, {args.tritons} Triton, {cores} cores; workdir {workdir}", flush=True)

    chain = BenchChain(args.checkpoints, entities, workdir, shards=args.shards, redis_db=args.redis_db,
                       fleet_file=fleet_file, tritons=args.tritons, simulator_phase=args.phase)
    db_url = f"{PG_SERVER}/smap_bench_{chain.run_id}"
    proxy: VictoriaProxy | None = None
    live: LiveCounter | None = None
    tap: ResultsTap | None = None
    vm2: Victoria | None = None
    db_created = False
    report: dict[str, Any] = {"streams": S, "rate_hz": args.rate_hz, "duration_s": args.duration_s,
                              "tritons": args.tritons, "shards": args.shards, "cores": cores,
                              "phase": args.phase,
                              "satellites": n_sats, "entities": len(entities), "workdir": str(workdir),
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        # ------------------------------------------------------------ start
        t_setup = time.monotonic()
        chain.start_infra()
        proxy = VictoriaProxy(chain.vm_url()).start()
        chain.victoria_override = proxy.url
        print(f"starting {args.tritons} Triton server(s) with {len(entities)} models ...", flush=True)
        chain.start_triton()
        chain.start_services()
        from smap_shared.alerting.store import ensure_database

        asyncio.run(ensure_database(db_url))
        db_created = True
        alert_api = start_alert_manager(chain, db_url)
        ws_url = start_operation_server(chain, alert_api)
        readers = Readers(f"localhost:{chain.kafka_port}", alert_db=db_url)
        live = LiveCounter(ws_url).start()
        readers.live = live
        readers.ws_base = readers.results_end()
        print(f"chain, alert manager and operation server up in {time.monotonic() - t_setup:.0f} s", flush=True)

        # ------------------------------------------------------------ warm-up
        if warm > 0:
            print(f"-- warm-up: {warm} steps per stream at {args.rate_hz:g} Hz", flush=True)
            chain.run_simulator(0, warm, timeout=warm * interval + 300, interval_s=interval)
            wait_frames("warm-up", S * warm, proxy.count, timeout_s=300, stall_s=120)

        # ------------------------------------------------------------ paced
        print(f"-- paced: {S} streams x {paced_steps} steps at {args.rate_hz:g} Hz ({S * args.rate_hz:.0f} "
              f"frames/s), all readers running", flush=True)
        base_count = proxy.count()
        sim_error: list[BaseException] = []

        def simulate(start: int, steps: int, interval_s: float, timeout: float) -> threading.Thread:
            def body() -> None:
                try:
                    chain.run_simulator(start, steps, timeout=timeout, interval_s=interval_s)
                except BaseException as exc:
                    sim_error.append(exc)

            th = threading.Thread(target=body, name="simulator", daemon=True)
            th.start()
            return th

        tap = ResultsTap(f"localhost:{chain.kafka_port}").start()
        cpu0 = cpu_by_component(chain)
        stages0 = stage_snapshot(chain)
        proxy0 = proxy.timing()
        t_paced0 = time.time()
        sim = simulate(warm, paced_steps, interval, paced_steps * interval + 300)
        lag_at_end: dict[str, dict[str, Any]] = {}
        sim_end: list[float] = []

        def at_sim_end() -> None:
            if not sim.is_alive() and not sim_end:
                sim_end.append(time.time())
                lag_at_end.update(readers.lag())

        wait_frames("paced", S * paced_steps, lambda: proxy.count() - base_count,
                    timeout_s=paced_steps * interval + 600, stall_s=max(120, 3 * interval), on_poll=at_sim_end)
        sim.join()
        at_sim_end()
        t_paced1 = time.time()
        cpu1 = cpu_by_component(chain)
        paced_stages = stage_report(stages0, stage_snapshot(chain))
        paced_stages["vm-proxy"] = proxy.timing_since(proxy0)
        for s in paced_stages.values():
            if "task_ms" in s:
                s["busy_share"] = round(s["tasks"] * s["task_ms"] / 1000 / (t_paced1 - t_paced0), 3)
        paced_frames_sent = simulator_frames(chain.logs / "simulator.log")
        # settle: every reader caught up?
        settled: dict[str, dict[str, Any]] = {}
        settled_after: float | None = None
        deadline = time.monotonic() + args.settle_s
        while True:
            settled = readers.lag()
            if all(v.get("lag") == 0 for v in settled.values()):
                settled_after = time.time() - sim_end[0]
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        tap.stop()
        paced_window = (_ms(t_paced0), _ms(sim_end[0]))
        stored = vm_samples_settled(chain.vm_url(), *paced_window, expected=S * paced_steps)
        arr = proxy.arrivals(*paced_window)
        latencies = [t * 1000 - ts for ts, t in arr]
        stamps = sorted({ts for ts, _ in arr})
        tick_ms = float(np.mean(np.diff(stamps))) if len(stamps) > 1 else None
        paced_cpu = cpu_rows(cpu_delta(cpu0, cpu1), t_paced1 - t_paced0, len(arr), exclude=[BENCH_ROW])
        lag_json = {name: {**v, "lag_at_end": v.get("lag"),
                           "lag_settled": settled.get(name, {}).get("lag")} for name, v in lag_at_end.items()}
        for v in lag_json.values():
            v.pop("lag", None)
        report["paced"] = {
            "streams": S, "rate_hz": args.rate_hz, "duration_s": args.duration_s, "steps": paced_steps,
            "phase": args.phase,
            "frames_sent": paced_frames_sent if paced_frames_sent is not None else S * paced_steps,
            "frames_expected": S * paced_steps, "frames_stored": stored["distinct"],
            "duplicate_samples": stored["duplicates"], "series": stored["series"],
            "latency_ms": percentiles(latencies),
            "latency_to_results_topic_ms": percentiles(tap.latencies_ms(*paced_window)),
            "tick_interval_ms_mean": round(tick_ms, 1) if tick_ms is not None else None,
            "lag": lag_json, "lag_settled_after_s": round(settled_after, 2) if settled_after is not None else None,
            "simulator_error": repr(sim_error[0]) if sim_error else None,
            "cpu": paced_cpu, "cpu_ms_per_frame": paced_cpu["chain_ms_per_frame"], "stages": paced_stages,
        }
        p = report["paced"]
        print(f"  frames sent {p['frames_sent']}, stored {p['frames_stored']} "
              f"(duplicates {p['duplicate_samples']})")
        lat = p["latency_ms"]
        print(f"  latency frame -> VictoriaMetrics 2xx: p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
              f"p99 {lat['p99']} ms, max {lat['max']} ms")
        lat = p["latency_to_results_topic_ms"]
        print(f"  of which frame -> results topic:      p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
              f"p99 {lat['p99']} ms, max {lat['max']} ms")
        print(f"  lag when the simulator ended: {lag_line(lag_at_end)}")
        when = f"after {settled_after:.1f} s" if settled_after is not None else "NOT within the settle time"
        print(f"  lag settled: {lag_line(settled)} ({when})")
        print_stages(paced_stages)

        # readers other than the consumer off: the full-speed phase measures telemetry -> VictoriaMetrics
        live.stop()
        stop_reader(chain, "operation-server")
        stop_reader(chain, "alert-manager")

        # ------------------------------------------------------------ full speed
        full_start = warm + paced_steps
        total = S * full
        print(f"-- full speed: {S} streams x {full} steps at interval 0 ({total} frames)", flush=True)
        base_count = proxy.count()
        sim_error.clear()
        cpu0 = cpu_by_component(chain)
        t_full0 = time.time()
        sim = simulate(full_start, full, 0, 1800)
        wait_frames("full speed", total, lambda: proxy.count() - base_count, timeout_s=3600, stall_s=180)
        sim.join()
        cpu1 = cpu_by_component(chain)
        t_sim_end = time.time()
        arr = proxy.arrivals(_ms(t_full0), _ms(t_sim_end))
        times = [t for _, t in arr]
        wall = (max(times) - t_full0) if times else float("nan")
        full_cpu = cpu_rows(cpu_delta(cpu0, cpu1), wall, len(arr),
                            exclude=[BENCH_ROW, "postgresql (whole server)"])
        stored = vm_samples_settled(chain.vm_url(), _ms(t_full0), _ms(t_sim_end), expected=total)
        full_fps = sustained_rate(times)
        report["full_speed"] = {
            "steps": full, "frames_sent": simulator_frames(chain.logs / "simulator.log"), "frames_expected": total,
            "frames_stored": stored["distinct"], "duplicate_samples": stored["duplicates"],
            "frames_per_s": round(full_fps, 1),
            "frames_per_s_overall": round(len(arr) / wall, 1) if times else None,
            "wall_s": round(wall, 2), "cpu_ms_per_frame": full_cpu["chain_ms_per_frame"], "cpu": full_cpu,
            "simulator_error": repr(sim_error[0]) if sim_error else None,
        }
        f = report["full_speed"]
        print(f"  {f['frames_stored']} frames stored (duplicates {f['duplicate_samples']}) in {wall:.1f} s: "
              f"{full_fps:.0f} frames/s sustained (middle 80%), {f['frames_per_s_overall']} overall")

        # ------------------------------------------------------------ baseline
        print(f"-- baseline: one process, the same {total} frames from topic {BASELINE_TOPIC}", flush=True)
        replays = []
        for sat, ent in streams:
            data = source.load(ent)
            replays.append(StreamReplay(sat, ent, data.test, data.test_mask()))
        filled = asyncio.run(fill_baseline_topic(f"localhost:{chain.kafka_port}", replays, full_start, full))
        vm2 = Victoria(workdir / "vm-baseline").start()
        extra = {"tansu": chain.procs["tansu"].pid}
        assert vm2.proc is not None
        extra["victoria-metrics (baseline)"] = vm2.proc.pid
        scorers = {e: Scorer(Checkpoint.load(args.checkpoints / f"{e}.ckpt")) for e in entities}
        b0 = cpu_by_component(chain, extra)
        bstats = asyncio.run(run_baseline(f"localhost:{chain.kafka_port}", vm2.url, scorers, fleet_file, filled,
                                          args.baseline_batch, timeout_s=1800))
        b1 = cpu_by_component(chain, extra)
        bwall = ((bstats.last_commit or 0) - (bstats.first_fetch or 0)) if bstats.frames else float("nan")
        bcpu = cpu_delta(b0, b1)
        base_cpu_s = bcpu[BENCH_ROW] + bcpu["tansu"] + bcpu["victoria-metrics (baseline)"]
        base_fps = sustained_rate(bstats.arrivals)
        bstored = vm_samples(vm2.url, 0, _ms(time.time()))
        report["baseline"] = {
            "frames": bstats.frames, "invalid": bstats.invalid, "imports": bstats.imports,
            "batch_max": args.baseline_batch, "frames_stored": bstored["distinct"],
            "frames_per_s": round(base_fps, 1),
            "frames_per_s_overall": round(bstats.frames / bwall, 1) if bwall > 0 else None,
            "wall_s": round(bwall, 2),
            "cpu_ms_per_frame": round(1000 * base_cpu_s / bstats.frames, 4) if bstats.frames else None,
            "cpu_s": {"process": round(bcpu[BENCH_ROW], 3), "tansu": round(bcpu["tansu"], 3),
                      "victoria-metrics": round(bcpu["victoria-metrics (baseline)"], 3)},
        }
        report["ratio_full_speed_vs_baseline"] = (round(full_fps / base_fps, 3)
                                                 if base_fps and math.isfinite(base_fps) else None)
        report["proxy"] = {"imports": proxy.imports, "failed_imports": proxy.failed_imports,
                           "reimported_samples": proxy.reimported}
        print_report(report)
    finally:
        for thread in (live, tap):
            if thread is not None:
                thread.stop()
        chain.stop()
        with contextlib.suppress(Exception):  # the models' stream state of this run (Redis memory)
            for entity in entities:
                RedisStateStore(chain.redis_state, f"smap_{entity}").clear()
        if vm2 is not None:
            vm2.stop()
        if proxy is not None:
            proxy.close()
        if db_created:
            from smap_shared.alerting.store import drop_database

            try:
                asyncio.run(drop_database(db_url))
            except Exception as exc:
                print(f"warning: dropping {db_url} failed: {exc!r}")
        report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"numbers written to {args.json}")


def print_report(r: dict[str, Any]) -> None:
    p, f, b = r["paced"], r["full_speed"], r["baseline"]
    lat = p["latency_ms"]
    print()
    print(f"== {r['streams']} streams, {r['shards']} shards, {r['tritons']} Triton, {r['cores']} cores")
    print(f"{'paced':24s} {p['rate_hz']:g} Hz x {p['duration_s']:g} s ({p['steps']} steps/stream)")
    print(f"{'  frames sent / stored':24s} {p['frames_sent']} / {p['frames_stored']} "
          f"(duplicates {p['duplicate_samples']})")
    print(f"{'  latency p50/p95/p99':24s} {lat['p50']} / {lat['p95']} / {lat['p99']} ms (frame -> VM 2xx)")
    lat = p["latency_to_results_topic_ms"]
    print(f"{'':24s} {lat['p50']} / {lat['p95']} / {lat['p99']} ms of it: frame -> results topic")
    for name, v in p["lag"].items():
        print(f"  lag {name:26s} {v.get('lag_at_end', v.get('error'))} when the simulator ended, "
              f"{v.get('lag_settled')} settled")
    print(f"{'  CPU per frame':24s} {p['cpu_ms_per_frame']} ms (chain + all readers)")
    print(f"{'full speed':24s} {f['frames_per_s']} frames/s sustained ({f['frames_stored']} of "
          f"{f['frames_expected']} stored)")
    print(f"{'  CPU per frame':24s} {f['cpu_ms_per_frame']} ms")
    print(f"{'baseline (1 process)':24s} {b['frames_per_s']} frames/s sustained, "
          f"{b['cpu_ms_per_frame']} ms CPU/frame")
    print(f"{'ratio full / baseline':24s} {r['ratio_full_speed_vs_baseline']}")
    print_cpu("paced phase (chain + every reader)", p["cpu"], p["frames_stored"])
    print_cpu("full-speed phase", f["cpu"], f["frames_stored"])


if __name__ == "__main__":
    main()
