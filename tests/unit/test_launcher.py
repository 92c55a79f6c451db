"""Pure parts of the tritonserver launcher: path discovery, stub placement, environment, command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smap_shared.triton import launcher
from smap_shared.triton.launcher import (
    SINGLE_THREAD_ENV,
    TritonLaunchError,
    TritonPaths,
    build_command,
    build_env,
    ensure_stub,
    parse_args,
    triton_paths,
)


def fake_pytriton(root: Path, version: str = "3.11") -> Path:
    """The layout of the nvidia-pytriton wheel, with placeholder files."""
    pkg = root / "site-packages" / "pytriton"
    dist = pkg / "tritonserver"
    for d in ("bin", "backends/python", "caches/local", f"python_backend_stubs/{version}"):
        (dist / d).mkdir(parents=True)
    (dist / "bin" / "tritonserver").write_text("server")
    (dist / "backends" / "python" / "libtriton_python.so").write_text("backend")
    (dist / "python_backend_stubs" / version / "triton_python_backend_stub").write_text(f"stub {version}")
    (root / "site-packages" / "nvidia_pytriton.libs").mkdir()
    return pkg


def test_triton_paths_finds_the_wheel_layout(tmp_path: Path) -> None:
    pkg = fake_pytriton(tmp_path)
    paths = triton_paths(pkg, "3.11")
    assert paths.binary == pkg / "tritonserver" / "bin" / "tritonserver"
    assert paths.libs == tmp_path / "site-packages" / "nvidia_pytriton.libs"
    assert paths.stub.read_text() == "stub 3.11"
    assert paths.installed_stub == pkg / "tritonserver" / "backends" / "python" / "triton_python_backend_stub"


def test_triton_paths_names_what_is_missing(tmp_path: Path) -> None:
    pkg = fake_pytriton(tmp_path, version="3.12")
    with pytest.raises(TritonLaunchError, match=r"python 3\.11 backend stub"):
        triton_paths(pkg, "3.11")


def test_the_installed_pytriton_has_a_stub_for_this_python() -> None:
    paths = triton_paths(launcher.find_pytriton_dir(), launcher.python_version())
    assert paths.binary.is_file()
    assert paths.stub.parent.name == launcher.python_version()


def test_ensure_stub_copies_only_when_missing_or_different(tmp_path: Path) -> None:
    paths = triton_paths(fake_pytriton(tmp_path), "3.11")
    assert ensure_stub(paths) is True
    assert paths.installed_stub.read_text() == "stub 3.11"
    assert ensure_stub(paths) is False
    paths.installed_stub.write_text("stub 3.10")  # a stale stub from another interpreter
    assert ensure_stub(paths) is True
    assert paths.installed_stub.read_text() == "stub 3.11"
    assert not list(paths.installed_stub.parent.glob("*.tmp*"))


def _paths(tmp_path: Path) -> TritonPaths:
    return triton_paths(fake_pytriton(tmp_path), "3.11")


def test_build_env_adds_libs_pythonpath_and_single_threaded_blas(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    base = {"LD_LIBRARY_PATH": "/opt/lib", "PYTHONPATH": "/mine", "PATH": "/usr/bin", "OMP_NUM_THREADS": "8"}
    env = build_env(base, paths, Path("/venv/site"), Path("/repo"))
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/opt/lib", str(paths.libs)]
    assert env["PYTHONPATH"].split(os.pathsep) == ["/venv/site", "/repo", "/mine"]
    assert env["PATH"].split(os.pathsep)[-1] == "/usr/bin"
    for key, value in SINGLE_THREAD_ENV.items():
        assert env[key] == value
    assert base["OMP_NUM_THREADS"] == "8"  # the caller's mapping is not modified


def test_build_env_from_empty_environment_has_no_empty_entries(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    env = build_env({}, paths, Path("/venv/site"), Path("/repo"))
    assert env["LD_LIBRARY_PATH"] == str(paths.libs)
    assert env["PYTHONPATH"] == os.pathsep.join(["/venv/site", "/repo"])
    # Idempotent: building twice does not duplicate entries.
    again = build_env(env, paths, Path("/venv/site"), Path("/repo"))
    assert again["PYTHONPATH"] == env["PYTHONPATH"]
    assert again["LD_LIBRARY_PATH"] == env["LD_LIBRARY_PATH"]


def test_build_command(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    cmd = build_command(paths, Path("/models"), 18200, 18201, 18202, "smap18200-ab-", ["--log-verbose=1"])
    assert cmd[0] == str(paths.binary)
    for arg in (
        "--model-repository=/models",
        f"--backend-directory={paths.backends}",
        "--http-port=18200",
        "--grpc-port=18201",
        "--metrics-port=18202",
        "--model-control-mode=none",
        "--exit-on-error=false",
        "--backend-config=python,shm-region-prefix-name=smap18200-ab-",
    ):
        assert arg in cmd
    assert cmd[-1] == "--log-verbose=1"


def test_shm_prefixes_are_unique_per_launch() -> None:
    assert launcher.new_shm_prefix(8100) != launcher.new_shm_prefix(8100)
    assert launcher.new_shm_prefix(8100).startswith("smap8100-")


def test_cli_defaults_come_from_triton_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_HTTP_PORT", "18300")
    monkeypatch.delenv("TRITON_GRPC_PORT", raising=False)
    args = parse_args([])
    assert (args.http_port, args.grpc_port) == (18300, 8101)
    assert args.repo == Path("triton-omnianomaly/models")
    assert not args.foreground
    args = parse_args(["--repo", "/r", "--http-port", "1", "--foreground", "--", "--log-verbose=1"])
    assert (args.repo, args.http_port, args.foreground) == (Path("/r"), 1, True)
    assert args.extra == ["--log-verbose=1"]


def test_cli_foreground_and_wait_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--foreground", "--wait-ready", "3"])


def test_remove_shm_regions_only_touches_its_prefix(tmp_path: Path) -> None:
    for name in ("smap18200-ab-1", "smap18200-ab-2", "smap18200-cd-1", "PostgreSQL.1"):
        (tmp_path / name).write_bytes(b"x")
    assert launcher.remove_shm_regions("smap18200-ab-", tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PostgreSQL.1", "smap18200-cd-1"]
