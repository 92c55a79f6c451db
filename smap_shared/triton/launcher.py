"""Launcher for the tritonserver shipped inside the `nvidia-pytriton` wheel.

The wheel carries a complete tritonserver (binary, python backend, bundled shared libraries), but it is
laid out for PyTriton's own use: the python backend stub for our interpreter must be copied next to
`libtriton_python.so`, and the bundled libraries must be on LD_LIBRARY_PATH. This module does that and
starts the server on a plain model repository, either as a managed child (`TritonServer`, for tests and
tools) or by exec'ing it in the foreground (`--foreground`, for supervisord).

CLI:
    python -m smap_shared.triton.launcher [--repo DIR] [--http-port N] [--grpc-port N] [--metrics-port N]
                                          [--foreground | --wait-ready SECONDS] [--log-file FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from smap_shared.infra.ports import port_open
from smap_shared.infra.procs import proc_table
from smap_shared.settings import TritonSettings

#: Repository root (smap_shared is installed editable from it): models import smap_shared from here.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: The python backend's default shared-memory arena is 64 MiB per model instance; with one model per
#: entity that adds up, while our tensors are a few hundred bytes. PyTriton uses the same small sizes.
SHM_DEFAULT_BYTES = 4 * 1024 * 1024
SHM_GROWTH_BYTES = 1024 * 1024

#: The models do tiny mat-vecs: BLAS thread pools only add contention (one pool per stub process).
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class TritonLaunchError(RuntimeError):
    """The server could not be found, prepared or started."""


@dataclass(frozen=True)
class TritonPaths:
    """Where the pip-installed server lives; `stub` is the interpreter-specific python backend stub."""

    binary: Path
    backends: Path
    caches: Path
    libs: Path
    stub: Path

    @property
    def installed_stub(self) -> Path:
        # The python backend looks for its stub in its own directory first.
        return self.backends / "python" / "triton_python_backend_stub"


def find_pytriton_dir() -> Path:
    """The installed `pytriton` package directory, found without importing it (its import is heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("package 'pytriton' (pip: nvidia-pytriton) is not installed in this Python")
    return Path(next(iter(spec.submodule_search_locations)))


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def triton_paths(pytriton_dir: Path, version: str) -> TritonPaths:
    dist = pytriton_dir / "tritonserver"
    paths = TritonPaths(
        binary=dist / "bin" / "tritonserver",
        backends=dist / "backends",
        caches=dist / "caches",
        # A wheel install keeps the bundled .so files beside the package (auditwheel's `<dist>.libs`).
        libs=pytriton_dir.parent / "nvidia_pytriton.libs",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for what, path in (("tritonserver binary", paths.binary), ("python backend", paths.backends / "python"),
                       ("bundled libraries", paths.libs), (f"python {version} backend stub", paths.stub)):
        if not path.exists():
            raise TritonLaunchError(f"{what} not found at {path} (is nvidia-pytriton installed correctly?)")
    return paths


def ensure_stub(paths: TritonPaths) -> bool:
    """Copy the interpreter's stub next to libtriton_python.so when missing or different; True if copied."""
    target = paths.installed_stub
    if target.exists() and filecmp.cmp(paths.stub, target, shallow=False):
        return False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.copy2(paths.stub, tmp)
    os.replace(tmp, target)  # atomic: a concurrently starting server never sees a half-written stub
    return True


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def stub_python_home(stub: Path, version: str) -> Path | None:
    """The prefix of the libpython the stub links (e.g. /usr for Debian's libpython3.11).

    The embedded interpreter derives its prefix from the first `python3` on PATH; with a venv of another
    patch release first on PATH it would load that release's stdlib (e.g. pyenv 3.11.7) into the system's
    libpython 3.11.2, and C modules such as _ssl then fail to import.
    """
    try:
        ldd = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=20, check=False)
        out = ldd.stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if "libpython" in line and "=>" in line:
            lib = Path(line.split("=>")[1].split("(")[0].strip()).resolve()
            for prefix in lib.parents:
                if (prefix / "lib" / f"python{version}" / "os.py").exists():
                    return prefix
    return None


def build_env(
    base: Mapping[str, str], paths: TritonPaths, site_dir: Path, repo_root: Path = REPO_ROOT
) -> dict[str, str]:
    """The server's environment: bundled libs on LD_LIBRARY_PATH, the venv and the repo on PYTHONPATH
    (model.py adds those entries to the stub's sys.path), single-threaded BLAS, the venv's bin on PATH."""
    env = dict(base)
    env["LD_LIBRARY_PATH"] = _join_path(env.get("LD_LIBRARY_PATH"), [str(paths.libs)], prepend=False)
    env["PYTHONPATH"] = _join_path(env.get("PYTHONPATH"), [str(site_dir), str(repo_root)], prepend=True)
    env["PATH"] = _join_path(env.get("PATH"), [str(Path(sys.executable).parent)], prepend=True)
    env.update(SINGLE_THREAD_ENV)
    home = stub_python_home(paths.installed_stub if paths.installed_stub.exists() else paths.stub,
                            python_version())
    if home is not None:
        # The stub's interpreter runs isolated (PYTHONHOME/PYTHONPATH ignored) and takes its prefix from the
        # first `python3` on PATH: make that the one that belongs to the libpython it links.
        env["PATH"] = _join_path(_without(env["PATH"], str(home / "bin")), [str(home / "bin")], prepend=True)
    return env


def _without(path: str, entry: str) -> str:
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and p != entry)


def _join_path(current: str | None, extra: Sequence[str], *, prepend: bool) -> str:
    existing = [p for p in (current or "").split(os.pathsep) if p]
    added = [p for p in extra if p not in existing]
    return os.pathsep.join([*added, *existing] if prepend else [*existing, *added])


def build_command(
    paths: TritonPaths,
    repo: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_prefix: str,
    extra_args: Sequence[str] = (),
    bind_address: str = "127.0.0.1",
) -> list[str]:
    """The tritonserver command line.

    --exit-on-error=false: a model that fails to load is reported (UNAVAILABLE in the repository index,
    an error in the log) while the others keep serving. Readiness stays strict, so /v2/health/ready means
    "every model loaded"; `wait_until_settled` tells "still loading" apart from "done, some failed".
    --model-control-mode=none: load the whole repository at start, nothing changes at run time.
    """
    return [
        str(paths.binary),
        f"--model-repository={repo}",
        f"--backend-directory={paths.backends}",
        f"--cache-directory={paths.caches}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        # tritonserver binds 0.0.0.0 unless told; the project's default is loopback (SMAP_BIND_ADDRESS)
        f"--http-address={bind_address}",
        f"--grpc-address={bind_address}",
        f"--metrics-address={bind_address}",
        "--model-control-mode=none",
        "--exit-on-error=false",
        "--strict-readiness=true",
        "--allow-gpu-metrics=false",
        # Several servers may share this host (tests, the lead's instance): unique shm region names.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        *extra_args,
    ]


def new_shm_prefix(http_port: int) -> str:
    return f"smap{http_port}-{secrets.token_hex(4)}-"


def remove_shm_regions(prefix: str, shm_dir: Path = Path("/dev/shm")) -> int:
    """Unlink the python backend's shared-memory regions of a server that is gone. A graceful stop
    removes them itself; after SIGKILL they would stay in /dev/shm (RAM) until reboot."""
    removed = 0
    for region in shm_dir.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            region.unlink()
            removed += 1
    return removed


STUB_NAME = "triton_python_backend_stub"


def orphaned_stubs(repo: Path) -> list[int]:
    """Python-backend stubs of models in `repo` whose tritonserver is gone (re-parented to init or to any
    process that is not a tritonserver): a SIGKILLed server leaves them behind, ~38 MB each."""
    table = proc_table()
    needle = str(Path(repo).resolve())
    return [
        pid for pid, p in table.items()
        if STUB_NAME in p.cmdline and needle in p.cmdline
        and (p.ppid not in table or "tritonserver" not in table[p.ppid].cmdline)
    ]


def reap_orphaned_stubs(repo: Path) -> int:
    """SIGKILL the orphaned stubs of `repo` (they ignore SIGTERM); returns how many."""
    pids = orphaned_stubs(repo)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def run_foreground(cmd: list[str], env: Mapping[str, str], shm_prefix: str) -> int:
    """Run tritonserver as a child and never let its stubs outlive it: this process becomes a child
    subreaper (stubs of a SIGKILLed server are re-parented to it, not to init), forwards SIGTERM/SIGINT to
    the server, and when the server exits for any reason kills whatever of its stubs is left, removes their
    shared memory and exits with the server's code (so a supervisor restarts a clean server)."""
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    proc = subprocess.Popen(cmd, env=dict(env), stdin=subprocess.DEVNULL)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    me = os.getpid()
    leftovers = [pid for pid, p in proc_table().items() if p.ppid == me]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in leftovers:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    remove_shm_regions(shm_prefix)
    if leftovers:
        print(f"tritonserver exited ({code}); killed {len(leftovers)} of its python stubs", flush=True)
    return code if code >= 0 else 128 - code


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    return port_open(port, host)


def _get_json(url: str, timeout: float, data: bytes | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, None


def is_ready(http_port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    try:
        return _get_json(f"http://{host}:{http_port}/v2/health/ready", timeout)[0] == 200
    except OSError:
        return False


def model_states(http_port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, str]:
    """name -> state (READY, LOADING, UNAVAILABLE, ...) from the repository index; {} when unreachable."""
    try:
        status, index = _get_json(f"http://{host}:{http_port}/v2/repository/index", timeout, data=b"{}")
    except OSError:
        return {}
    if status != 200 or not isinstance(index, list):
        return {}
    return {str(m.get("name")): str(m.get("state", "")) for m in index if isinstance(m, dict)}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    failed: dict[str, str]  # model -> state, for models that settled in a non-READY state

    def describe(self) -> str:
        if self.ready:
            return "ready"
        if self.failed:
            return "loading finished; models not available: " + ", ".join(sorted(self.failed))
        return "not ready"


def wait_until_settled(
    http_port: int,
    timeout: float,
    host: str = "127.0.0.1",
    alive: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
) -> Readiness:
    """Poll until the server is ready, or until every model has settled with some not READY (a load
    failure: no point waiting), or until `timeout`. `alive` is an optional zero-argument callable that
    returns False once the server process has died."""
    deadline = time.monotonic() + timeout
    while True:
        if is_ready(http_port, host):
            return Readiness(True, {})
        states = model_states(http_port, host)
        if states and all(s not in ("LOADING", "UNLOADING", "") for s in states.values()):
            failed = {m: s for m, s in states.items() if s != "READY"}
            if failed:
                return Readiness(False, failed)
        if alive is not None and not alive():
            return Readiness(False, {})
        if time.monotonic() >= deadline:
            return Readiness(False, {})
        time.sleep(poll_s)


class TritonServer:
    """A tritonserver child process with its log in a file. Usable as a context manager:

        with TritonServer(repo, http_port=18200, grpc_port=18201, metrics_port=18202) as server:
            server.wait_ready(120)
    """

    def __init__(
        self,
        repo: Path | str,
        http_port: int = 8100,
        grpc_port: int = 8101,
        metrics_port: int = 8102,
        log_path: Path | str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        bind_address: str = "127.0.0.1",
    ) -> None:
        self.repo = Path(repo).resolve()
        self.bind_address = bind_address
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_path = Path(log_path) if log_path else Path(f".run/logs/triton-{http_port}.log").resolve()
        self.extra_args = tuple(extra_args)
        self._base_env = dict(os.environ if env is None else env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._shm_prefix = ""
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def shm_prefix(self) -> str:
        """Name prefix of this launch's python backend shared-memory regions in /dev/shm."""
        return self._shm_prefix

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        if not self.repo.is_dir():
            raise TritonLaunchError(f"model repository {self.repo} does not exist")
        busy = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if port_in_use(p)]
        if busy:
            raise TritonLaunchError(f"port(s) {busy} already in use: is another tritonserver running?")
        reap_orphaned_stubs(self.repo)
        paths = triton_paths(find_pytriton_dir(), python_version())
        ensure_stub(paths)
        self._shm_prefix = new_shm_prefix(self.http_port)
        cmd = build_command(paths, self.repo, self.http_port, self.grpc_port, self.metrics_port,
                            self._shm_prefix, self.extra_args, self.bind_address)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # Own session: the server and its python stubs form one process group that kill() can end.
        self._proc = subprocess.Popen(
            cmd, env=build_env(self._base_env, paths, site_packages()), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until /v2/health/ready answers 200; raise with the log's tail on failure or timeout."""
        result = wait_until_settled(self.http_port, timeout, alive=self.is_running)
        if not result.ready:
            why = "exited" if not self.is_running() else result.describe()
            raise TritonLaunchError(f"tritonserver on :{self.http_port} {why}; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful: SIGTERM lets the server finish in-flight requests and unload the models."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL the whole process group (server and stubs): a crash, for tests."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        return self._finish()

    def _finish(self) -> int | None:
        code = self._proc.returncode if self._proc else None
        if self._proc is not None:
            # Stubs left behind by a dead server would keep their shm regions: end the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            if self._shm_prefix:
                time.sleep(0.2)  # let the killed stubs exit before their regions go
                remove_shm_regions(self._shm_prefix)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    s = TritonSettings()
    p = argparse.ArgumentParser(
        prog="python -m smap_shared.triton.launcher", description="Start the pip-installed tritonserver."
    )
    p.add_argument("--repo", type=Path, default=s.triton_model_repository, help="model repository")
    p.add_argument("--http-port", type=int, default=s.triton_http_port)
    p.add_argument("--grpc-port", type=int, default=s.triton_grpc_port)
    p.add_argument("--metrics-port", type=int, default=s.triton_metrics_port)
    p.add_argument("--bind-address", default=s.smap_bind_address,
                   help="address of the three listeners (default SMAP_BIND_ADDRESS, else 127.0.0.1)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--foreground", action="store_true",
                      help="exec tritonserver in this process (logs on stdout): for supervisord")
    mode.add_argument("--wait-ready", type=float, metavar="SECONDS",
                      help="start nothing: wait for the server on --http-port; exit 0 ready, 2 some models "
                           "failed to load, 1 timeout")
    p.add_argument("--log-file", type=Path, help="background mode: server log (.run/logs/triton-PORT.log)")
    p.add_argument("--timeout", type=float, default=180.0, help="background mode: seconds to wait for ready")
    p.add_argument("extra", nargs="*", help="extra tritonserver arguments (after --)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.wait_ready is not None:
        result = wait_until_settled(a.http_port, a.wait_ready)
        print(f"tritonserver :{a.http_port}: {result.describe()}", flush=True)
        return 0 if result.ready else (2 if result.failed else 1)
    repo = a.repo if a.repo.is_absolute() else (Path.cwd() / a.repo)
    if not repo.is_dir():
        print(f"model repository {repo} missing: run triton-omnianomaly/setup_models.sh", file=sys.stderr)
        return 1
    reaped = reap_orphaned_stubs(repo)
    if reaped:
        print(f"reaped {reaped} python stubs left behind by a dead tritonserver", flush=True)
    if a.foreground:
        paths = triton_paths(find_pytriton_dir(), python_version())
        ensure_stub(paths)
        prefix = new_shm_prefix(a.http_port)
        cmd = build_command(paths, repo.resolve(), a.http_port, a.grpc_port, a.metrics_port, prefix, a.extra,
                            a.bind_address)
        sys.stdout.flush()
        return run_foreground(cmd, build_env(os.environ, paths, site_packages()), prefix)
    # Background: start detached, wait for ready, leave it running.
    server = TritonServer(repo, a.http_port, a.grpc_port, a.metrics_port, a.log_file, a.extra,
                          bind_address=a.bind_address)
    try:
        server.start()
    except TritonLaunchError as e:
        print(e, file=sys.stderr)
        return 1
    result = wait_until_settled(a.http_port, a.timeout, alive=server.is_running)
    where = f"pid {server.pid}, http :{a.http_port} grpc :{a.grpc_port} metrics :{a.metrics_port}"
    if result.ready or result.failed:
        # Like the foreground mode, a model that fails to load is reported, not fatal for the others.
        print(f"tritonserver {result.describe()} ({where}); log {server.log_path}", flush=True)
        return 0 if result.ready else 2
    print(f"tritonserver did not become ready ({where}); log tail:\n{server.log_tail()}", file=sys.stderr)
    server.kill()
    return 1


if __name__ == "__main__":
    sys.exit(main())
