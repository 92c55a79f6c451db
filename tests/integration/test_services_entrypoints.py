"""The services' entry points as processes: metrics endpoint up, SIGTERM -> clean exit (rc 0); the
simulator stops by itself at max steps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_metrics(port: int, proc: subprocess.Popen[str], timeout_s: float = 15) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no metrics on :{port}")


def _start(service: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / service / "main.py")], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize(("service", "metric"), [
    ("smap-inference-trigger", "smap_trigger_messages_total"),
    ("smap-victoria-consumer", "smap_consumer_lines_written_total"),
])
def test_consumer_services_stop_cleanly_on_sigterm(service: str, metric: str) -> None:
    run = uuid.uuid4().hex[:8]
    port = _free_port()
    proc = _start(service, {
        "METRICS_PORT": str(port), "TELEMETRY_TOPIC": f"it-ep-tel-{run}", "RESULTS_TOPIC": f"it-ep-res-{run}",
        "TRIGGER_GROUP_ID": f"it-ep-{run}", "CONSUMER_GROUP_ID": f"it-ep-{run}",
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",  # never used: nothing to publish
    })
    try:
        text = _wait_for_metrics(port, proc)
        assert metric in text
        time.sleep(1.0)  # let it get into its consume loop
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    assert "stopped" in out


def test_simulator_entry_point_runs_to_max_steps() -> None:
    port = _free_port()
    proc = _start("smap-simulator", {
        "METRICS_PORT": str(port), "TELEMETRY_TOPIC": f"it-ep-sim-{uuid.uuid4().hex[:8]}",
        "SIMULATOR_INTERVAL_S": "0", "SIMULATOR_MAX_STEPS": "3", "SIMULATOR_ENTITIES": "A-1,P-1",
    })
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    assert "simulator done: 3 ticks, 6 frames" in out
