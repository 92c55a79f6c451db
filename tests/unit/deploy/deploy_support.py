"""Static readers for the Docker deployment files: Compose YAML (with `${VAR}` interpolation, YAML merge
keys and the `!reset`/`!override` tags), override merging, .env files, Dockerfiles and .dockerignore.

No Docker engine is needed (or available on the build machines): these implement the parts of the Compose
and Dockerfile semantics the deployment files use, and refuse (raise) what they do not model, so a test
never passes on a construct it did not understand.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "docker-compose.smap.yml"
CPU_OVERRIDE_FILE = REPO_ROOT / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"


# ---------------------------------------------------------------- YAML with Compose's custom tags


@dataclass(frozen=True)
class Reset:
    """`!reset`: the override removes the attribute."""

    value: Any


@dataclass(frozen=True)
class Override:
    """`!override`: the override replaces the attribute instead of merging it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader (which resolves `<<:` merge keys) that also knows Compose's `!reset` and `!override`."""


def _construct_any(loader: ComposeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    raise yaml.constructor.ConstructorError(None, None, f"unexpected node {node!r}", node.start_mark)


def _construct_reset(loader: ComposeLoader, node: yaml.Node) -> Reset:
    return Reset(_construct_any(loader, node))


def _construct_override(loader: ComposeLoader, node: yaml.Node) -> Override:
    return Override(_construct_any(loader, node))


ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass: no arbitrary objects
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is not a mapping")
    return data


# ---------------------------------------------------------------- interpolation


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """A variable is unset without a default, marked required (`:?`), or the syntax is not modelled."""


@dataclass(frozen=True)
class VarUse:
    name: str
    op: str | None  # None, ":-", "-", ":?", "?", ":+", "+"
    arg: str | None


def variable_uses(text: str) -> list[VarUse]:
    uses = []
    for m in _VAR.finditer(text):
        if m.group("escaped") is not None:
            continue
        if m.group("invalid") is not None:
            raise InterpolationError(f"invalid '$' in {text!r} (write $$ for a literal $)")
        name = m.group("braced") or m.group("named")
        if "$" in (m.group("arg") or ""):
            raise InterpolationError(f"nested interpolation is not modelled: {text!r}")
        uses.append(VarUse(name, m.group("op"), m.group("arg")))
    return uses


def interpolate_str(text: str, env: dict[str, str], *, strict: bool = True) -> str:
    """Compose's substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}. strict: an unset variable without default raises (Compose
    would warn and substitute '')."""

    def sub(m: re.Match[str]) -> str:  # noqa: PLR0911 -- one return per operator
        if m.group("escaped") is not None:
            return "$"
        if m.group("invalid") is not None:
            raise InterpolationError(f"invalid '$' in {text!r}")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        if value is None:
            if strict:
                raise InterpolationError(f"variable {name} is not set and has no default")
            return ""
        return value

    return _VAR.sub(sub, text)


def interpolate(data: Any, env: dict[str, str], *, strict: bool = True) -> Any:
    """Interpolate every string value (not keys) of a loaded Compose document, recursively."""
    if isinstance(data, str):
        return interpolate_str(data, env, strict=strict)
    if isinstance(data, dict):
        return {k: interpolate(v, env, strict=strict) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, strict=strict) for v in data]
    if isinstance(data, Reset):
        return Reset(interpolate(data.value, env, strict=strict))
    if isinstance(data, Override):
        return Override(interpolate(data.value, env, strict=strict))
    return data


def all_strings(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for v in data.values() for s in all_strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in all_strings(v)]
    if isinstance(data, Reset | Override):
        return all_strings(data.value)
    return []


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; comments and blank lines skipped; no quoting (the example file uses none)."""
    env: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path}:{n}: not KEY=VALUE: {raw!r}")
        if value[:1] in ("'", '"'):
            raise ValueError(f"{path}:{n}: quoted values are not modelled here")
        if key in env:
            raise ValueError(f"{path}:{n}: {key} set twice")
        env[key] = value
    return env


# ---------------------------------------------------------------- override merge


def merge(base: Any, over: Any, where: str = "") -> Any:
    """Compose's merge of an override file, for mappings and tagged values. Untagged sequences are
    merged by Compose per attribute (ports, volumes, ...): not modelled, so they raise."""
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, f"{where}.{key}")
            else:
                out[key] = _untag(value)
        return out
    if isinstance(over, list) or isinstance(base, list):
        raise NotImplementedError(f"untagged sequence merge at {where or '<root>'} is not modelled")
    return over


def _untag(data: Any) -> Any:
    if isinstance(data, Override):
        return _untag(data.value)
    if isinstance(data, dict):
        return {k: _untag(v) for k, v in data.items() if not isinstance(v, Reset)}
    if isinstance(data, list):
        return [_untag(v) for v in data]
    return data


# ---------------------------------------------------------------- compose helpers


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict (mapping or KEY=VALUE list form); values as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str | None
    host_port: int
    container_port: int


def parse_port(entry: Any) -> PortMapping:
    """Short syntax "[IP:]HOST:CONTAINER" (no ranges, no protocol suffix: not used here)."""
    if isinstance(entry, dict):
        return PortMapping(entry.get("host_ip"), int(entry["published"]), int(entry["target"]))
    parts = str(entry).split(":")
    if len(parts) == 3:
        return PortMapping(parts[0], int(parts[1]), int(parts[2]))
    if len(parts) == 2:
        return PortMapping(None, int(parts[0]), int(parts[1]))
    raise ValueError(f"port {entry!r}: publish as [IP:]HOST:CONTAINER")


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {} for name in deps}  # short form: no condition
    return {str(k): dict(v or {}) for k, v in deps.items()}


def command_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


# ---------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined
    line: int


@dataclass
class Stage:
    base: str  # as written (may hold ${ARG})
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all_instructions(self) -> list[Instruction]:
        return [i for s in self.stages for i in s.instructions]

    def resolve(self, text: str, extra: dict[str, str] | None = None) -> str:
        env = {**self.global_args, **(extra or {})}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults of a stage (redeclared global ARGs keep their global default)."""
        args: dict[str, str] = {}
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                args[name] = default if _ else self.global_args.get(name, "")
        return args

    def resolved_base(self, stage: Stage) -> str:
        return self.resolve(stage.base)

    def stage(self, target: str | None) -> Stage:
        """The stage a build of `target` ends with (no target: the last stage, as `docker build` does)."""
        if target is None:
            return self.final
        for st in self.stages:
            if st.name == target:
                return st
        raise KeyError(f"{self.path}: no stage named {target!r}")

    def chain(self, target: str | None) -> list[Stage]:
        """The stages the image of `target` is made of, its root first: `FROM <stage>` followed back
        (stages only reached by `COPY --from` contribute files, not layers, and are not listed)."""
        names = {st.name: st for st in self.stages if st.name}
        out = [self.stage(target)]
        while out[0].base in names:
            out.insert(0, names[out[0].base])
        return out

    def image_instructions(self, target: str | None) -> list[Instruction]:
        """Every instruction whose effect reaches the image of `target`, in build order."""
        return [i for st in self.chain(target) for i in st.instructions]

    def last(self, keyword: str, target: str | None) -> str | None:
        """Arguments of the last `keyword` instruction in the image of `target` (inherited ones count)."""
        found = [i.args for i in self.image_instructions(target) if i.keyword == keyword]
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not current:
            start = n
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        logical.append((start, " ".join(p for p in current if p)))
        current = []
    if current:
        raise ValueError(f"{path}: dangling line continuation")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}:{n}: {keyword} before the first FROM")
            name, sep, default = args.partition("=")
            global_args[name] = default if sep else ""
        else:
            stages[-1].instructions.append(Instruction(keyword, args, n))
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return Dockerfile(path, global_args, stages)


def exec_form(args: str) -> list[str] | None:
    """JSON exec form of CMD/ENTRYPOINT/SHELL, or None for the shell form."""
    if args.startswith("["):
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"bad exec form: {args}")
        return value
    return None


def copy_sources(ins: Instruction) -> tuple[list[str], str, bool]:
    """(sources, destination, from_other_stage) of a COPY instruction."""
    words = shlex.split(ins.args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    if len(paths) < 2:
        raise ValueError(f"line {ins.line}: COPY needs a source and a destination")
    return paths[:-1], paths[-1], any(f.startswith("--from") for f in flags)


def last_user(df: Dockerfile, target: str | None = None) -> str | None:
    return df.last("USER", target)


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[re.Pattern[str], bool], ...]  # (pattern, is_exclusion) in file order

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = pattern.strip("/")
            rules.append((_pattern_regex(pattern), negated))
        return cls(tuple(rules))

    def excluded(self, rel_path: str) -> bool:
        """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
        parts = rel_path.strip("/").split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for regex, negated in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negated
        return result
