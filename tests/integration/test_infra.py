"""Infrastructure tooling against the real thing: the tritonserver launcher with a tiny numpy "echo"
model on ports 18200-18202 (8100-8102 and 18100-18102 belong to other users of this host), and
scripts/infra.sh starting and stopping services on spare ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from smap_shared.infra.ports import free_port
from smap_shared.triton.launcher import TritonLaunchError, TritonServer, model_states, port_in_use

pytestmark = pytest.mark.integration

PORTS = (18200, 18201, 18202)

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP64 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP64 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

ECHO = '''
import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH: add the launcher's entries (the venv's numpy).
for _p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _p and _p not in sys.path:
        sys.path.append(_p)

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            y = pb_utils.Tensor("OUTPUT0", np.asarray(x, dtype=np.float64) * 2.0)
            out.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return out
'''


def add_model(repo: Path, name: str, source: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(source)


def infer(port: int, model: str, values: list[float]) -> list[float]:
    body = {"inputs": [{"name": "INPUT0", "shape": [len(values)], "datatype": "FP64", "data": values}]}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.loads(resp.read())
    return [float(v) for v in out["outputs"][0]["data"]]


def make_server(repo: Path, log: Path) -> TritonServer:
    http, grpc, metrics = PORTS
    return TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=log)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if any(port_in_use(p) for p in PORTS):
        pytest.fail(f"ports {list(PORTS)} are busy: a leftover tritonserver from an earlier run?")
    repo = tmp_path / "models"
    add_model(repo, "echo", ECHO)
    return repo


def test_start_ready_infer_kill_restart(repo: Path, tmp_path: Path) -> None:
    server = make_server(repo, tmp_path / "triton.log")
    try:
        server.start()
        server.wait_ready(120)
        assert server.pid is not None
        assert infer(18200, "echo", [1.0, -2.5, 3.25]) == [2.0, -5.0, 6.5]

        prefix = server.shm_prefix
        assert list(Path("/dev/shm").glob(f"{prefix}*"))  # the python backend's regions
        server.kill()  # a crash: SIGKILL, nothing graceful
        assert not server.is_running()
        assert not list(Path("/dev/shm").glob(f"{prefix}*"))  # not leaked
        assert not port_in_use(18200)
        with pytest.raises(OSError):
            infer(18200, "echo", [1.0])

        server.start()  # same ports straight away
        server.wait_ready(120)
        assert infer(18200, "echo", [4.0]) == [8.0]
        assert server.stop() == 0  # SIGTERM: a clean exit
        assert not port_in_use(18200)
    finally:
        server.kill()
    assert "Started HTTPService at 127.0.0.1:18200" in (tmp_path / "triton.log").read_text()  # loopback by default


def test_a_broken_model_is_reported_and_the_others_still_serve(repo: Path, tmp_path: Path) -> None:
    add_model(repo, "broken", 'raise RuntimeError("boom at import")\n')
    with make_server(repo, tmp_path / "triton.log") as server:
        with pytest.raises(TritonLaunchError, match="models not available: broken"):
            server.wait_ready(120)
        assert server.is_running()
        assert model_states(18200) == {"echo": "READY", "broken": "UNAVAILABLE"}
        assert infer(18200, "echo", [0.5]) == [1.0]
    assert "boom at import" in (tmp_path / "triton.log").read_text()


def test_cli_wait_ready_exit_codes(repo: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "smap_shared.triton.launcher", "--http-port", "18200"]

    def wait(seconds: str) -> subprocess.CompletedProcess[str]:
        argv = [*cmd, "--wait-ready", seconds]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    idle = wait("1")
    assert idle.returncode == 1, idle.stdout + idle.stderr
    with make_server(repo, tmp_path / "triton.log") as server:
        server.wait_ready(120)
        ready = wait("30")
        assert ready.returncode == 0, ready.stdout + ready.stderr
        assert "ready" in ready.stdout


def test_start_refuses_a_busy_port(repo: Path) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests leave TIME_WAIT entries
        s.bind(("127.0.0.1", 18200))
        s.listen()
        with pytest.raises(TritonLaunchError, match="already in use"):
            make_server(repo, repo / "triton.log").start()


def run_infra(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[2] / "scripts" / "infra.sh"
    return subprocess.run(
        ["bash", str(script), action], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_infra_script_starts_only_what_is_missing_and_stops_only_that(tmp_path: Path) -> None:
    """Tansu and Redis on spare ports (so missing), the other services on their usual ports (running)."""
    kafka, redis = free_port(), free_port()
    run_dir = tmp_path / "run"
    env = {**os.environ, "SMAP_RUN_DIR": str(run_dir), "KAFKA_PORT": str(kafka), "REDIS_PORT": str(redis)}
    try:
        up = run_infra("up", env)
        assert up.returncode == 0, up.stderr
        assert port_in_use(kafka) and port_in_use(redis)
        assert "rabbitmq: already listening on :5672, left alone" in up.stderr
        started = (run_dir / "infra-started").read_text().split("\n")
        assert [line.split()[0] for line in started if line] == ["tansu", "redis"]

        again = run_infra("up", env)
        assert again.returncode == 0, again.stderr
        assert f"tansu: already listening on :{kafka}, left alone" in again.stderr
        assert (run_dir / "infra-started").read_text().split("\n") == started

        status = run_infra("status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "started by infra.sh" in status.stdout.split("\n")[0]  # tansu
        assert "external" in status.stdout.split("\n")[1]  # rabbitmq

        down = run_infra("down", env)
        assert down.returncode == 0, down.stderr
        assert not port_in_use(kafka) and not port_in_use(redis)
        assert not (run_dir / "infra-started").exists()
        assert port_in_use(5672) and port_in_use(8428)  # not ours: left running
    finally:
        run_infra("down", env)
