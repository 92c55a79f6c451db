"""Services come back, and clean (issue 14, holes 4 and 5), on the real tritonserver and supervisord.

- A dead tritonserver's python stubs never outlive it: the foreground launcher (what supervisord runs) is a
  child subreaper and kills them when the server dies; stubs left by a launcher that was killed too are
  reaped by the next start.
- A service that keeps failing at start is restarted with backoff for as long as it fails: the program
  section start-smap.sh writes keeps retrying where supervisord's default gave up after 5 tries (FATAL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_infra import ECHO, add_model

from smap_shared.infra.ports import free_port
from smap_shared.infra.procs import proc_table
from smap_shared.triton.launcher import STUB_NAME, is_ready, orphaned_stubs

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _stubs(repo: Path) -> list[int]:
    return [pid for pid, p in proc_table().items() if STUB_NAME in p.cmdline and str(repo.resolve()) in p.cmdline]


def _children(pid: int) -> list[int]:
    return [p for p, proc in proc_table().items() if proc.ppid == pid]


def _launcher(repo: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "smap_shared.triton.launcher", "--foreground", "--repo", str(repo),
           "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s: {what}")


def test_a_dead_tritons_stubs_never_outlive_it(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for k in range(3):
        add_model(repo, f"echo{k}", ECHO)
    port, log = free_port(), tmp_path / "triton.log"
    launcher = _launcher(repo, port, log)
    try:
        _wait(lambda: is_ready(port), 120, "tritonserver ready")
        assert len(_stubs(repo)) == 3
        [server] = [p for p in _children(launcher.pid) if "tritonserver" in proc_table()[p].cmdline]
        os.kill(server, signal.SIGKILL)  # a crash of the server alone
        assert launcher.wait(30) != 0  # the launcher exits with the server, so a supervisor restarts it
        _wait(lambda: not _stubs(repo), 10, "the dead server's stubs to be gone")

        # the launcher killed as well (SIGKILL of the whole supervisor tree): the stubs are orphaned ...
        launcher = _launcher(repo, port, log)
        _wait(lambda: is_ready(port), 120, "tritonserver ready again")
        os.killpg(launcher.pid, signal.SIGSTOP)  # freeze the group so the launcher cannot clean up
        [server] = [p for p in _children(launcher.pid) if "tritonserver" in proc_table()[p].cmdline]
        os.kill(launcher.pid, signal.SIGKILL)
        os.kill(server, signal.SIGKILL)
        launcher.wait(10)
        stubs = _stubs(repo)
        for pid in stubs:
            os.kill(pid, signal.SIGCONT)
        _wait(lambda: set(orphaned_stubs(repo)) == set(_stubs(repo)) and _stubs(repo), 10, "orphans seen")
        # ... and the next start reaps them before it starts a new server
        launcher = _launcher(repo, port, log)
        _wait(lambda: is_ready(port), 120, "tritonserver ready a third time")
        assert not set(stubs) & set(_stubs(repo)), "orphaned stubs survived the restart"
        assert len(_stubs(repo)) == 3
        assert "reaped 3 python stubs" in log.read_text()
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(60)
        for pid in _stubs(repo):
            os.kill(pid, signal.SIGKILL)
    assert not _stubs(repo)


def test_a_service_failing_at_start_is_restarted_for_as_long_as_it_fails(tmp_path: Path) -> None:
    """The program fails at start 8 times in a row (supervisord's default budget is 5), then runs."""
    counter, flaky = tmp_path / "starts", tmp_path / "flaky.sh"
    flaky.write_text(f'n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}\n'
                     '[ "$n" -le 8 ] && exit 1\nexec sleep 600\n')
    section = subprocess.run(
        ["bash", "-c", f'LOG_DIR={tmp_path}; source <(sed -n "/^program() {{/,/^}}/p" start-smap.sh); '
                       f'program flaky {tmp_path} 10 "bash {flaky}"'],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    section = section.replace("autostart=false", "autostart=true")
    conf = tmp_path / "supervisord.conf"
    sock = tmp_path / "s.sock"
    conf.write_text(f"[unix_http_server]\nfile={sock}\n[supervisord]\nlogfile={tmp_path}/sd.log\n"
                    f"pidfile={tmp_path}/sd.pid\nnodaemon=false\n[rpcinterface:supervisor]\n"
                    "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                    f"[supervisorctl]\nserverurl=unix://{sock}\n{section}")
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "supervisord"), "-c", str(conf)], check=True, timeout=30)
    try:
        def status() -> str:
            return subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(conf), "status", "flaky"],
                                  capture_output=True, text=True, timeout=30, check=False).stdout

        _wait(lambda: "RUNNING" in status(), 120, f"flaky RUNNING after its failed starts ({status()})")
        assert int(counter.read_text()) == 9
    finally:
        subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(conf), "shutdown"], timeout=60, check=False)
