"""Docker Compose deployment, checked statically (no Docker engine on the build machines): the Compose
files against the Compose specification's JSON schema, the chain's services, ports, health checks and
start order, and the environment each service gets against the settings class it reads (drift fails)."""

from __future__ import annotations

import base64
import json
import re
import shlex
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    CPU_OVERRIDE_FILE,
    ENV_EXAMPLE,
    REPO_ROOT,
    SCHEMA_FILE,
    InterpolationError,
    all_strings,
    command_list,
    depends_on,
    env_of,
    exec_form,
    interpolate,
    interpolate_str,
    load_yaml,
    merge,
    parse_dockerfile,
    parse_port,
    read_env_file,
    variable_uses,
)
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings

from smap_shared.routing import queue_name
from smap_shared.schemas import InferenceResult
from smap_shared.settings import (
    AlertManagerSettings,
    ConsumerSettings,
    OperationServerSettings,
    SimulatorSettings,
    TriggerSettings,
    TritonSettings,
    WorkerSettings,
)
from smap_shared.streaming.consumer import result_lines, results_dlq_topic

INFRA = ("kafka", "rabbitmq", "redis", "victoriametrics", "kafka-ui", "postgres")
CHAIN = ("triton-omnianomaly", "smap-simulator", "smap-inference-trigger", "smap-victoria-consumer", "flower",
         "smap-alert-manager", "smap-operation-server")
WORKER_PREFIX = "smap-analysis-worker-"

#: host port (default) -> (service, container port), as the spec publishes them
SPEC_PORTS = {
    8100: ("triton-omnianomaly", 8000),
    8101: ("triton-omnianomaly", 8001),
    8102: ("triton-omnianomaly", 8002),
    8080: ("kafka-ui", 8080),
    5555: ("flower", 5555),
    15672: ("rabbitmq", 15672),
    8428: ("victoriametrics", 8428),
    8000: ("smap-operation-server", 8000),
}

#: Variables a service gets that are not fields of its settings class, each with the reason.
NON_SETTINGS_ENV = {
    "SHARD_INDEX": "worker CMD (-Q ...-$SHARD_INDEX -n shard$SHARD_INDEX@%h) and worker_metrics_port()",
    "FLOWER_BASIC_AUTH": "read by Flower itself (FLOWER_<option>)",
    "FLOWER_BROKER_API": "read by Flower itself (FLOWER_<option>)",
}


def service_settings(name: str) -> tuple[type[BaseSettings], set[str] | None]:
    """The settings class a compose service reads, and the variables it must get (None: derive them)."""
    if name.startswith(WORKER_PREFIX):
        return WorkerSettings, None
    table: dict[str, tuple[type[BaseSettings], set[str] | None]] = {
        "smap-simulator": (SimulatorSettings, None),
        "smap-inference-trigger": (TriggerSettings, None),
        "smap-victoria-consumer": (ConsumerSettings, None),
        "triton-omnianomaly": (TritonSettings, {
            "MODEL_STATE_REDIS_URL", "TRITON_INSTANCE_KIND", "TRITON_MODEL_REPOSITORY", "CHECKPOINT_DIR",
            "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT",
        }),
        # Flower only talks to the broker and the result backend (it imports the worker's Celery app)
        "flower": (WorkerSettings, {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "INFERENCE_SHARDS"}),
        "smap-alert-manager": (AlertManagerSettings, None),
        "smap-operation-server": (OperationServerSettings, None),
    }
    return table[name]


# ---------------------------------------------------------------- loading


@cache
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@cache
def raw_base() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@cache
def raw_cpu() -> dict[str, Any]:
    return load_yaml(CPU_OVERRIDE_FILE)


def base(env: dict[str, str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = interpolate(raw_base(), example_env() if env is None else env)
    return result


def cpu_merged() -> dict[str, Any]:
    result: dict[str, Any] = merge(base(), interpolate(raw_cpu(), example_env()))
    return result


def services(doc: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = (doc or base())["services"]
    return svcs


def workers() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in services().items() if k.startswith(WORKER_PREFIX)}


@cache
def schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    errors = schema_validator().iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


# ---------------------------------------------------------------- the Compose specification


def test_schema_is_the_vendored_compose_spec() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["title"] == "Compose Specification"
    # the recent spec: profiles, GPU device reservations, the `name` top-level key
    assert {"name", "services", "volumes"} <= set(schema["properties"])
    service_keys = set(schema["definitions"]["service"]["properties"])
    assert {"profiles", "deploy", "healthcheck", "gpus"} <= service_keys
    source = (SCHEMA_FILE.parent / "SOURCE.md").read_text()
    assert "Apache" in source and "compose-spec" in source
    assert (SCHEMA_FILE.parent / "LICENSE-compose-spec").exists()


@pytest.mark.parametrize("which", ["base", "cpu-override", "base+cpu"])
def test_compose_files_match_the_compose_spec(which: str) -> None:
    if which == "base":
        doc = base()
    elif which == "base+cpu":
        doc = cpu_merged()
    else:  # the override alone: !reset [] checked as []
        doc = json.loads(json.dumps(interpolate(raw_cpu(), example_env()), default=lambda o: o.value))
    assert schema_errors(doc) == []


def test_schema_check_catches_mistakes() -> None:
    """The validation is live: a typo'd key and a wrong healthcheck shape are rejected."""
    doc = base()
    broken = json.loads(json.dumps(doc))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert any("helthcheck" in e for e in schema_errors(broken))
    broken = json.loads(json.dumps(doc))
    broken["services"]["redis"]["healthcheck"]["test"] = {"cmd": "x"}
    assert schema_errors(broken)


# ---------------------------------------------------------------- variables, credentials, ports


def test_every_variable_is_in_env_example_and_every_example_variable_is_used() -> None:
    used = {
        use.name
        for doc in (raw_base(), raw_cpu())
        for text in all_strings(doc)
        for use in variable_uses(text)
    }
    documented = set(example_env())
    assert used - documented == set(), "variables used by the compose files but missing in .env.example"
    assert documented - used == set(), ".env.example variables no compose file uses"


#: Secrets of optional notification channels: empty (channel off) is valid, so they are `${VAR:-}`, not
#: required; they still come from .env only, and .env.example leaves them empty.
OPTIONAL_SECRETS = {"SLACK_WEBHOOK_URL", "SMTP_USERNAME", "SMTP_PASSWORD"}


def test_optional_notification_secrets_come_from_env_only() -> None:
    for name in OPTIONAL_SECRETS:
        assert example_env()[name] == "", f"{name}: .env.example must leave it empty"
    env = env_of(raw_base()["services"]["smap-alert-manager"])
    for name in OPTIONAL_SECRETS:
        assert env[name] == f"${{{name}:-}}", name


def test_credentials_are_required_from_env_and_never_literal() -> None:
    required = {
        use.name
        for text in all_strings(raw_base())
        for use in variable_uses(text)
        if use.op in (":?", "?")
    }
    secrets = {k for k in example_env() if re.search(r"PASSWORD|USER", k)} - OPTIONAL_SECRETS
    assert secrets <= required, "credentials must be `${VAR:?...}`: compose refuses to start without .env"
    for name in secrets:
        with pytest.raises(InterpolationError, match=name):
            base({k: v for k, v in example_env().items() if k != name})
    for text in all_strings(raw_base()):
        for user_info in re.findall(r"://([^/@\s]+)@", text):
            assert all(part.startswith("${") for part in user_info.split(":") if part), text
    for key, value in ((k, v) for s in services().values() for k, v in env_of(s).items()):
        if re.search(r"PASS|SECRET|AUTH|TOKEN", key) and key not in OPTIONAL_SECRETS:
            assert value, key


def test_env_example_holds_placeholders_only() -> None:
    for key, value in example_env().items():
        if "PASSWORD" in key and key not in OPTIONAL_SECRETS:
            assert value.startswith("change-me"), f"{key}: .env.example must not carry a real secret"
    gitignore = (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore


def test_spec_ports_are_published_and_overridable() -> None:
    published = {
        parse_port(p).host_port: (name, parse_port(p).container_port)
        for name, svc in services().items()
        for p in svc.get("ports", [])
    }
    for host_port, target in SPEC_PORTS.items():
        assert published.get(host_port) == target, f"host port {host_port}"
    # every published host port comes from a *_HOST_PORT variable; change them all and they all follow
    for svc in raw_base()["services"].values():
        for raw in svc.get("ports", []):
            pattern = r"\$\{SMAP_BIND_ADDRESS:-127\.0\.0\.1\}:\$\{[A-Z_]+_HOST_PORT:-\d+\}:\d+"
            assert re.fullmatch(pattern, raw), raw
    shifted = {k: (str(20000 + i) if k.endswith("_HOST_PORT") else v)
               for i, (k, v) in enumerate(example_env().items())}
    new_ports = {
        parse_port(p).host_port for svc in services(base(shifted)).values() for p in svc.get("ports", [])
    }
    assert new_ports and all(p >= 20000 for p in new_ports)
    assert len(new_ports) == sum(len(s.get("ports", [])) for s in services().values()), "host port clash"


def test_images_are_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image", "")
        assert image, f"{name}: no image name"
        if "build" in svc:
            assert image.startswith("smap/") and image.endswith(":local"), name
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: unpinned {image}"


# ---------------------------------------------------------------- services, health checks, start order


def test_the_whole_chain_is_there() -> None:
    names = set(services())
    assert set(INFRA) | set(CHAIN) <= names
    shards = int(env_of(services()["smap-inference-trigger"])["INFERENCE_SHARDS"])
    assert set(workers()) == {f"{WORKER_PREFIX}{k}" for k in range(shards)}
    assert names - set(INFRA) - set(CHAIN) - set(workers()) == {"grafana"}


def test_every_service_has_a_health_check() -> None:
    for name, svc in services().items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name}: no health check"
        test = command_list(hc["test"])
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert hc.get("interval") and hc.get("timeout") and hc.get("retries"), name


def test_triton_health_check_is_readiness_on_the_http_port() -> None:
    triton = services()["triton-omnianomaly"]
    test = " ".join(command_list(triton["healthcheck"]["test"]))
    http_port = env_of(triton)["TRITON_HTTP_PORT"]
    assert f"127.0.0.1:{http_port}/v2/health/ready" in test
    # every model loads before "ready": give the start (and a first-run training) time
    assert triton["healthcheck"]["start_period"] in ("300s", "5m")


def test_metrics_health_checks_use_the_service_metrics_port() -> None:
    for name in ("smap-simulator", "smap-inference-trigger", "smap-victoria-consumer"):
        svc = services()[name]
        assert "METRICS_PORT" in env_of(svc), name
        assert "os.environ['METRICS_PORT']" in " ".join(command_list(svc["healthcheck"]["test"])), name


def test_worker_health_check_pings_its_own_shard_node() -> None:
    for name, svc in workers().items():
        test = " ".join(command_list(svc["healthcheck"]["test"]))
        # `$$` in the file: the container's shell expands these, with the command's -n shard$SHARD_INDEX@%h
        assert "inspect ping -d shard${SHARD_INDEX}@${HOSTNAME}" in test
        assert svc["hostname"] == name  # %h in the node name: stable across container re-creation


def test_dependencies_wait_for_healthy_services() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, spec in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            assert "profiles" not in svcs[dep], f"{name} depends on optional {dep}"


def closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in depends_on(services()[todo.pop()]):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_chain_starts_in_order() -> None:
    for name in services():
        assert name not in closure(name), f"dependency cycle through {name}"
    assert closure("smap-simulator") >= {
        "kafka", "rabbitmq", "redis", "victoriametrics", "triton-omnianomaly",
        "smap-inference-trigger", "smap-victoria-consumer", *workers(),
    }
    assert set(workers()) <= set(depends_on(services()["smap-inference-trigger"]))
    for worker in workers().values():
        assert {"triton-omnianomaly", "rabbitmq", "kafka", "redis"} <= set(depends_on(worker))
    assert "redis" in depends_on(services()["triton-omnianomaly"])


def _hosts(value: str) -> set[str]:
    """Hosts named by a connection setting: URLs, or comma-separated host:port lists."""
    hosts = set()
    for part in value.split(","):
        m = re.match(r"^(?:[a-z+]+://)?(?:[^@/]*@)?([A-Za-z0-9_.-]+):\d+", part.strip())
        if m:
            hosts.add(m.group(1))
    return hosts


#: (service, variable) naming a compose service it may start without, and why.
OPTIONAL_PEERS = {
    ("smap-operation-server", "ALERT_MANAGER_URL"): "the dashboard works without alerts (its panel says so)",
}
#: Addresses for people, not connections the service makes: the host is the one its readers reach.
LINKS = {"ALERT_DASHBOARD_URL"}


def test_connection_settings_name_healthy_dependencies() -> None:
    """Every host a service connects to is a compose service it waits for (never localhost)."""
    for name, svc in services().items():
        if name not in CHAIN and not name.startswith(WORKER_PREFIX):
            continue
        _, required = service_settings(name)
        env = env_of(svc)
        for key, value in env.items():
            if (required is not None and key not in required) or key in LINKS:
                continue
            for host in _hosts(value):
                assert host != "localhost", f"{name}: {key}={value}"
                if (name, key) in OPTIONAL_PEERS:
                    assert host in services() and "profiles" not in services()[host], f"{name}: {key}"
                    continue
                assert host in depends_on(svc), f"{name}: {key} names {host}, not a dependency"


# ---------------------------------------------------------------- settings drift


def _field_vars(cls: type[BaseSettings]) -> dict[str, str]:
    return {name.upper(): name for name in cls.model_fields}


def _localhost_fields(cls: type[BaseSettings]) -> set[str]:
    """Connection settings: a default that points at this host is wrong inside a container."""
    out = set()
    for name, info in cls.model_fields.items():
        if isinstance(info.default, str) and re.search(r"localhost|127\.0\.0\.1", info.default):
            out.add(name.upper())
    return out


def python_services() -> list[str]:
    return [n for n in services() if n in CHAIN or n.startswith(WORKER_PREFIX)]


@pytest.mark.parametrize("name", python_services())
def test_service_environment_matches_its_settings_class(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls, required = service_settings(name)
    env = env_of(services()[name])
    fields = _field_vars(cls)
    unknown = {k for k in env if k not in fields and k not in NON_SETTINGS_ENV}
    assert unknown == set(), f"{name} sets variables {cls.__name__} does not read"
    need = _localhost_fields(cls) if required is None else required
    missing = need - set(env)
    assert missing == set(), f"{name} leaves {sorted(missing)} at their native-mode defaults"
    # the class accepts what compose sets (types, ranges) and reads it back
    for var in fields:
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    for key, value in env.items():
        if key in fields:
            info = cls.model_fields[fields[key]]
            expected: object = TypeAdapter(info.annotation).validate_strings(value)
            assert getattr(settings, fields[key]) == expected, f"{key} is not read as field {fields[key]}"


def test_drift_check_catches_an_unknown_variable() -> None:
    """The allow-list is not a catch-all: a misspelt setting is not a field and not allowed."""
    fields = _field_vars(WorkerSettings)
    assert "TRITON_URLS" not in fields and "TRITON_URLS" not in NON_SETTINGS_ENV
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CELERY_BROKER_URL", "TRITON_URL"} <= _localhost_fields(WorkerSettings)
    assert "VICTORIA_URL" in _localhost_fields(ConsumerSettings)


def test_non_settings_variables_are_used_where_set() -> None:
    for name, svc in services().items():
        for key in env_of(svc).keys() & NON_SETTINGS_ENV.keys():
            if key == "SHARD_INDEX":
                assert "${SHARD_INDEX}" in " ".join(effective_command(name)), name
            else:
                assert name == "flower" and key.startswith("FLOWER_"), (name, key)


def test_shards_agree_everywhere() -> None:
    shard_counts = {
        name: env_of(svc)["INFERENCE_SHARDS"]
        for name, svc in services().items()
        if "INFERENCE_SHARDS" in env_of(svc)
    }
    assert {"smap-inference-trigger", "flower", *workers()} <= set(shard_counts)
    assert len(set(shard_counts.values())) == 1, shard_counts
    n = int(next(iter(shard_counts.values())))
    indices = sorted(int(env_of(w)["SHARD_INDEX"]) for w in workers().values())
    assert indices == list(range(n))
    for name, svc in workers().items():
        k = int(env_of(svc)["SHARD_INDEX"])
        assert name == f"{WORKER_PREFIX}{k}"
        cmd = " ".join(effective_command(name)).replace("${SHARD_INDEX}", str(k))
        assert f"-Q {queue_name(k)} " in cmd and f"-n shard{k}@%h" in cmd


# ---------------------------------------------------------------- commands


def image_build(name: str) -> dict[str, Any]:
    """The compose `build` of the service's image (its own, or that of the service building the image)."""
    svc = services()[name]
    build: dict[str, Any] = svc.get("build") or next(
        s["build"] for s in services().values() if s.get("image") == svc["image"] and "build" in s
    )
    return build


def image_setting(name: str, keyword: str) -> str:
    """The last `keyword` (CMD, WORKDIR, ...) in the image of the service's build target, inherited ones
    included."""
    build = image_build(name)
    df = parse_dockerfile(REPO_ROOT / build["context"] / build["dockerfile"])
    value = df.last(keyword, build.get("target"))
    assert value is not None, f"{name}: no {keyword} in {build['dockerfile']} target {build.get('target')}"
    return value


def effective_command(name: str) -> list[str]:
    """The service's command: compose `command`, else the CMD of its image's build target."""
    svc = services()[name]
    if "command" in svc:
        return command_list(svc["command"])
    form = exec_form(image_setting(name, "CMD"))
    assert form is not None, f"{name}: CMD in shell form"
    if form[:2] == ["sh", "-c"]:
        return shlex.split(form[2])
    return form


def workdir(name: str) -> str:
    return image_setting(name, "WORKDIR")


@pytest.mark.parametrize(
    ("name", "script"),
    [("smap-simulator", "smap-simulator/main.py"),
     ("smap-inference-trigger", "smap-inference-trigger/main.py"),
     ("smap-victoria-consumer", "smap-victoria-consumer/main.py"),
     ("smap-alert-manager", "smap-alert-manager/main.py"),
     ("smap-operation-server", "smap-operation-server/main.py")],
)
def test_python_service_commands(name: str, script: str) -> None:
    assert effective_command(name) == ["python", script]
    assert workdir(name) == "/app"
    assert (REPO_ROOT / script).is_file()


def test_worker_and_flower_commands() -> None:
    for name in workers():
        assert effective_command(name) == shlex.split(
            "exec celery -A smap_analysis.celery_app worker -Q smap-inference-shard-${SHARD_INDEX} -c 1 "
            "--prefetch-multiplier 1 -n shard${SHARD_INDEX}@%h --pool threads -E"
        )
        assert workdir(name) == "/app/smap-analysis-worker"
    flower = ["celery", "-A", "smap_analysis.celery_app", "flower", "--port=5555"]
    assert effective_command("flower") == flower
    assert workdir("flower") == "/app/smap-analysis-worker"
    assert (REPO_ROOT / "smap-analysis-worker" / "smap_analysis" / "celery_app.py").is_file()


# ---------------------------------------------------------------- infrastructure details


def test_named_volumes_hold_the_data() -> None:
    declared = set(base()["volumes"])
    expected = {"kafka": "/var/lib/kafka/data", "rabbitmq": "/var/lib/rabbitmq",
                "postgres": "/var/lib/postgresql/data",
                "victoriametrics": "/victoria-metrics-data"}
    for name, target in expected.items():
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services()[name]["volumes"]}
        assert mounts.get(target) in declared, f"{name}: {target} is not on a named volume"
    kafka_env = env_of(services()["kafka"])
    assert kafka_env["KAFKA_LOG_DIRS"] == expected["kafka"]
    assert f"-storageDataPath={expected['victoriametrics']}" in services()["victoriametrics"]["command"]


def test_bind_mounts_and_build_files_exist() -> None:
    for name, svc in services().items():
        for vol in svc.get("volumes", []):
            source = str(vol).split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name}: {source}"
        if "build" in svc:
            context = REPO_ROOT / svc["build"]["context"]
            assert context.is_dir(), name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
            if "target" in svc["build"]:  # raises when the Dockerfile has no such stage
                parse_dockerfile(context / svc["build"]["dockerfile"]).stage(svc["build"]["target"])


def test_kafka_is_kraft_and_creates_every_topic_the_chain_uses() -> None:
    kafka = services()["kafka"]
    env = env_of(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64url UUID"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # so every topic must be listed below
    topics = dict(spec.rsplit(":", 1) for spec in env["SMAP_TOPICS"].split())
    assert all(int(p) >= 1 for p in topics.values())
    svc_env = {name: env_of(s) for name, s in services().items()}

    def settings_of(name: str, cls: type[BaseSettings]) -> Any:
        # model_validate: what compose sets over the class defaults, without this process's environment
        values = {k.lower(): v for k, v in svc_env[name].items() if k.lower() in cls.model_fields}
        return cls.model_validate(values)

    sim = settings_of("smap-simulator", SimulatorSettings)
    trig = settings_of("smap-inference-trigger", TriggerSettings)
    cons = settings_of("smap-victoria-consumer", ConsumerSettings)
    work = settings_of(f"{WORKER_PREFIX}0", WorkerSettings)
    needed = {sim.telemetry_topic, trig.telemetry_topic, trig.dlq_topic, work.results_topic,
              cons.results_topic, results_dlq_topic(cons),
              settings_of("smap-alert-manager", AlertManagerSettings).alerts_topic}
    assert needed <= set(topics), f"topics not created: {needed - set(topics)}"
    # the entrypoint wrapper marks readiness only after creating them; the health check waits for it
    script = (REPO_ROOT / "docker" / "kafka" / "create-topics.sh").read_text()
    marker = re.search(r"^ready=(\S+)$", script, re.M)
    assert marker and marker.group(1) in " ".join(command_list(kafka["healthcheck"]["test"]))
    assert kafka["entrypoint"][-1] in {str(v).split(":")[1] for v in kafka["volumes"]}
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised
    host_port = next(parse_port(p).host_port for p in kafka["ports"])
    assert f"localhost:{host_port}" in advertised


def _native_victoria_flags() -> dict[str, str]:
    """-flag=value pairs of native mode's victoria-metrics command (scripts/infra.sh, start-smap.sh)."""
    scripts = (REPO_ROOT / "start-smap.sh", *sorted((REPO_ROOT / "scripts").glob("*.sh")))
    text = "\n".join(p.read_text() for p in scripts if p.exists())
    m = re.search(r"victoria-metrics -storageDataPath(?:[^\n]*\\\n)*[^\n]*", text)
    assert m, "native mode's victoria-metrics command not found"
    return dict(re.findall(r"(-[\w.]+)=\"?([^\s\")]+)", m.group(0)))


def test_victoriametrics_flags_match_native_mode() -> None:
    flags = dict(f.split("=", 1) for f in services()["victoriametrics"]["command"])
    assert flags["-dedup.minScrapeInterval"] == "1ms"
    assert flags["-search.latencyOffset"] == "1s"
    native = _native_victoria_flags()
    for name in ("-storageDataPath", "-httpListenAddr"):  # paths and listen address differ by design
        flags.pop(name)
        native.pop(name, None)
    # native mode leaves the retention at VictoriaMetrics' default, 1 (month)
    native.setdefault("-retentionPeriod", "1")
    assert flags == native


def test_triton_gpu_reservation_and_ports() -> None:
    triton = services()["triton-omnianomaly"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    env = env_of(triton)
    assert env["TRITON_INSTANCE_KIND"] == "KIND_GPU"
    ports = {parse_port(p).container_port: parse_port(p).host_port for p in triton["ports"]}
    assert ports == {int(env["TRITON_HTTP_PORT"]): 8100, int(env["TRITON_GRPC_PORT"]): 8101,
                     int(env["TRITON_METRICS_PORT"]): 8102}
    for w in workers().values():
        assert env_of(w)["TRITON_URL"] == f"triton-omnianomaly:{env['TRITON_HTTP_PORT']}"
    assert triton["build"]["dockerfile"] == "triton-omnianomaly/Dockerfile.triton-omnianomaly"
    size = triton["shm_size"]
    assert re.fullmatch(r"\d+[gG][bB]?", size) or int(re.sub(r"\D", "", size)) >= 512, size


def test_cpu_override_drops_the_gpu_and_changes_nothing_else() -> None:
    merged = cpu_merged()
    triton = merged["services"]["triton-omnianomaly"]
    assert env_of(triton)["TRITON_INSTANCE_KIND"] == "KIND_CPU"
    assert "devices" not in triton["deploy"]["resources"]["reservations"]
    gpu = base()
    for name in gpu["services"]:
        if name != "triton-omnianomaly":
            assert merged["services"][name] == gpu["services"][name], name
    rest = {k: v for k, v in triton.items() if k not in ("environment", "deploy")}
    assert rest == {k: v for k, v in gpu["services"]["triton-omnianomaly"].items()
                    if k not in ("environment", "deploy")}
    assert env_of(triton).keys() == env_of(gpu["services"]["triton-omnianomaly"]).keys()


def test_cpu_override_without_reset_would_keep_the_gpu() -> None:
    """The merge model is faithful: a plain mapping override merges instead of replacing."""
    reservations: dict[str, Any] = {"reservations": {}}
    over = {"services": {"triton-omnianomaly": {"deploy": {"resources": reservations}}}}
    merged = merge(base(), over)
    assert merged["services"]["triton-omnianomaly"]["deploy"]["resources"]["reservations"]["devices"]
    with pytest.raises(NotImplementedError):
        merge(base(), {"services": {"redis": {"ports": ["1:2"]}}})


def test_interpolation_model() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate_str("${A:-2}-${B:-3}-${E:-4}-${E-5}-$$A-$A", env) == "1-3-4--$A-1"
    with pytest.raises(InterpolationError):
        interpolate_str("${B:?needed}", env)
    with pytest.raises(InterpolationError):
        interpolate_str("${B}", env)


# ---------------------------------------------------------------- Grafana (optional profile)


def test_grafana_is_an_optional_profile_with_provisioning() -> None:
    svcs = services()
    assert svcs["grafana"]["profiles"] == ["grafana"]
    assert [n for n, s in svcs.items() if "profiles" in s] == ["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svcs["grafana"]["volumes"]}
    provisioning = REPO_ROOT / mounts["/etc/grafana/provisioning"]
    (ds_file,) = (provisioning / "datasources").glob("*.yml")
    ds = yaml.safe_load(ds_file.read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["uid"] == "victoriametrics"
    host_port = ds["url"].split("//")[1]
    assert host_port == "victoriametrics:8428" and "victoriametrics" in depends_on(svcs["grafana"])
    (prov_file,) = (provisioning / "dashboards").glob("*.yml")
    dash_path = yaml.safe_load(prov_file.read_text())["providers"][0]["options"]["path"]
    assert dash_path in mounts
    home = env_of(svcs["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_path + "/")
    assert (REPO_ROOT / mounts[dash_path] / Path(home).name).is_file()


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO_ROOT / "docker/grafana/dashboards/smap-anomaly.json").read_text())
    return data


def _exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"]]
    return exprs


def test_dashboard_uses_what_the_consumer_writes() -> None:
    """Metric and label names in the dashboard are the ones smap-victoria-consumer writes (drift fails)."""
    result = InferenceResult(
        stream_id="SAT-001/A-1", satellite_id="SAT-001", entity="A-1", model_name="smap_A-1",
        timestamp=datetime(2024, 1, 1, tzinfo=UTC), index=0,
        sensor_values={"sensor_0": 0.1}, reconstruction={"sensor_0": 0.1}, sensor_error={"sensor_0": 0.0},
        anomaly_score=1.0, anomaly_detected=False, threshold=2.0, inference_time_ms=1.0,
        ground_truth_labels={"sensor_0": 0},
    )
    written: dict[str, set[str]] = {}
    for line in result_lines(result):
        m = re.match(r"^(\w+)\{([^}]*)\}", line)
        assert m, line
        written[m.group(1)] = set(re.findall(r'(\w+)="', m.group(2)))
    dash = _dashboard()
    for expr in _exprs(dash):
        for metric, selector in re.findall(r"\b(smap_\w+)(?:\{([^}]*)\})?", expr):
            assert metric in written, f"dashboard reads {metric}, which the consumer does not write"
            labels = set(re.findall(r"(\w+)=~?\"", selector))
            assert labels <= written[metric], (metric, labels - written[metric])
        for label in re.findall(r",\s*(\w+)\)$", expr):  # label_values(..., label)
            assert any(label in labels for labels in written.values()), label


def test_dashboard_variables_and_panels() -> None:
    dash = _dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"satellite", "entity"} <= set(variables)
    assert "$satellite" in variables["entity"]["query"]["query"]
    exprs = " ".join(_exprs(dash))
    for metric in ("smap_anomaly_score", "smap_sensor_value", "smap_sensor_reconstruction"):
        assert metric in exprs
    value_panel = next(p for p in dash["panels"] if "reconstruction" in p["title"].lower())
    panel_exprs = " ".join(t["expr"] for t in value_panel["targets"])
    assert "smap_sensor_value" in panel_exprs and "smap_sensor_reconstruction" in panel_exprs
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "victoriametrics"
        for t in p["targets"]:
            assert '$satellite' in t["expr"] and '$entity' in t["expr"], t["expr"]


def test_alert_manager_uses_the_compose_postgres_and_serves_its_api() -> None:
    svc = services()["smap-alert-manager"]
    env = env_of(svc)
    assert {"kafka", "postgres"} <= set(depends_on(svc))
    pg = env_of(services()["postgres"])
    url = env["ALERT_DATABASE_URL"]
    assert url == f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert "pg_isready" in " ".join(command_list(services()["postgres"]["healthcheck"]["test"]))
    ports = {parse_port(p).container_port for p in svc["ports"]}
    assert ports == {int(env["ALERT_API_PORT"])} and env["ALERT_API_HOST"] == "0.0.0.0"
    assert "/healthz" in " ".join(command_list(svc["healthcheck"]["test"]))


def test_operation_server_reads_the_chain_and_serves_the_dashboard() -> None:
    svc = services()["smap-operation-server"]
    env = env_of(svc)
    assert {"kafka", "victoriametrics"} <= set(depends_on(svc))
    assert env["VICTORIA_URL"] == "http://victoriametrics:8428"
    assert env["ALERT_MANAGER_URL"] == f"http://smap-alert-manager:{env_of(services()['smap-alert-manager'])['ALERT_API_PORT']}"
    assert env["ALERTS_TOPIC"] == env_of(services()["smap-alert-manager"])["ALERTS_TOPIC"]
    ports = {parse_port(p).container_port for p in svc["ports"]}
    assert ports == {int(env["OPERATION_PORT"])} and env["OPERATION_HOST"] == "0.0.0.0"
    assert "/healthz" in " ".join(command_list(svc["healthcheck"]["test"]))
