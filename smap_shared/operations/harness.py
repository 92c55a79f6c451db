"""Private processes for the operation server's tests and benchmark: a fresh VictoriaMetrics with the
chain's flags, and the operation server itself run as supervisord runs it (smap-operation-server/main.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from smap_shared.infra.chain import spawn, stop_process, victoria_command
from smap_shared.infra.ports import free_port, wait_port


@dataclass
class Victoria:
    """A private, empty VictoriaMetrics (`victoria_command`: the flags of the chain and scripts/infra.sh)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Victoria:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(victoria_command(self.workdir / "vm", self.port), self.workdir / "victoria-metrics.log")
        if not wait_port(self.port, timeout=30):
            raise RuntimeError(f"VictoriaMetrics did not open port {self.port}")
        return self

    def import_lines(self, lines: list[str]) -> None:
        """Prometheus text lines (with ms timestamps); returns once they are searchable."""
        body = ("\n".join(lines) + "\n").encode()
        req = urllib.request.Request(f"{self.url}/api/v1/import/prometheus", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60):
            pass
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30):
            pass

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class OperationServer:
    """smap-operation-server/main.py on free ports, configured through its environment."""

    workdir: Path
    victoria_url: str
    kafka_bootstrap: str = "127.0.0.1:1"  # nothing listens there: the live feed keeps retrying
    alert_manager_url: str = "http://127.0.0.1:1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more settings, e.g. SMAP_AUTH, ALERT_DATABASE_URL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60, wait_feed: bool = False) -> OperationServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "OPERATION_HOST": "127.0.0.1", "OPERATION_PORT": str(self.port), "METRICS_PORT": str(free_port()),
            "VICTORIA_URL": self.victoria_url, "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "ALERT_MANAGER_URL": self.alert_manager_url, "LOG_LEVEL": "INFO",
        })
        env.update(self.env)
        log = self.workdir / "operation-server.log"
        self.proc = spawn([sys.executable, "smap-operation-server/main.py"], log, env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operation server exited {self.proc.returncode}; see {self.workdir}")
            health = self.health()
            if health is not None and (not wait_feed or health.get("live_feed") == "connected"):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"operation server not ready after {timeout_s} s; see {self.workdir}")

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                body: dict[str, object] = json.loads(resp.read())
                return body
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
