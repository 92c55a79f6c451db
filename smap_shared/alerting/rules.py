"""Alert rules: a TOML file validated at start (an invalid rule stops the service with a clear message).

    [[rule]]
    name = "anomaly-3-frames"            # unique; also the key of its alerts' lifecycle
    severity = "critical"                 # info | warning | critical
    satellite = "*"                       # fnmatch patterns (*, ?, [AB]) on satellite id, entity, sensor
    entity = "*"
    # sensor = "sensor_0"                 # set: one lifecycle per matching sensor (sensor-scoped rule)
    channels = ["slack", "email"]         # where a firing is notified (empty: history only)
    cooldown_s = 900                      # no second notification for the same rule and stream within this
    resolve_after_frames = 5              # a firing alert resolves after this many clear frames
    notify_resolved = false               # also notify the resolution
    top_sensors = 3                       # sensors with the largest reconstruction error carried by the alert
    [rule.condition]
    kind = "consecutive"                  # anomaly_detected on `frames` consecutive frames
    frames = 3
    # kind = "score_above": value > threshold, for at least duration_s (frame time); the value is the
    #   anomaly score, or the sensor's reconstruction error for a sensor-scoped rule
    # kind = "detections_in_window": at least `count` frames with anomaly_detected within window_s
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smap_shared.schemas import AlertSeverity

Channel = Literal["slack", "email"]
CHANNELS: tuple[Channel, ...] = ("slack", "email")


class RuleConfigError(ValueError):
    """The rules file is missing, not TOML, or a rule in it is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Consecutive(_Strict):
    kind: Literal["consecutive"]
    frames: int = Field(ge=1, le=100_000)


class ScoreAbove(_Strict):
    kind: Literal["score_above"]
    threshold: float
    duration_s: float = Field(default=0.0, ge=0)


class DetectionsInWindow(_Strict):
    kind: Literal["detections_in_window"]
    count: int = Field(ge=1, le=100_000)
    window_s: float = Field(gt=0)


Condition = Annotated[Consecutive | ScoreAbove | DetectionsInWindow, Field(discriminator="kind")]


class AlertRule(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    severity: AlertSeverity
    satellite: str = Field(default="*", min_length=1)
    entity: str = Field(default="*", min_length=1)
    sensor: str | None = Field(default=None, min_length=1)
    condition: Condition
    channels: tuple[Channel, ...] = ()
    cooldown_s: float = Field(default=900.0, ge=0)
    resolve_after_frames: int = Field(default=5, ge=1)
    notify_resolved: bool = False
    top_sensors: int = Field(default=3, ge=1, le=100)
    enabled: bool = True

    @field_validator("channels")
    @classmethod
    def _unique(cls, v: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a channel is listed twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        if self.sensor is not None and self.condition.kind != "score_above":
            raise ValueError(
                f"condition {self.condition.kind!r} reads anomaly_detected, which is per stream: a sensor-scoped "
                "rule needs kind = 'score_above' (on the sensor's reconstruction error)")
        return self

    def matches(self, satellite_id: str, entity: str) -> bool:
        return fnmatchcase(satellite_id, self.satellite) and fnmatchcase(entity, self.entity)

    def sensors_of(self, sensors: list[str]) -> list[str | None]:
        """The lifecycles this rule keeps for a stream with these sensors: [None] for a stream-scoped rule."""
        if self.sensor is None:
            return [None]
        pattern = self.sensor
        return [s for s in sensors if fnmatchcase(s, pattern)]


class RuleSet(_Strict):
    rule: tuple[AlertRule, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        if not self.rule:
            raise ValueError("no [[rule]] defined")
        names = [r.name for r in self.rule]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule name(s): {', '.join(dupes)}")
        return self

    @property
    def enabled(self) -> list[AlertRule]:
        return [r for r in self.rule if r.enabled]


def _describe(exc: ValidationError, doc: dict[str, object]) -> str:
    rules = doc.get("rule")
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int) and isinstance(rules, list):
            name = rules[loc[1]].get("name", "?") if isinstance(rules[loc[1]], dict) else "?"
            where = f"rule #{loc[1] + 1} ({name!r})" + ("." + ".".join(str(p) for p in loc[2:]) if loc[2:] else "")
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_rules(text: str, where: str = "<rules>") -> RuleSet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleConfigError(f"alert rules {where}: not valid TOML: {exc}") from exc
    try:
        return RuleSet.model_validate(doc)
    except ValidationError as exc:
        raise RuleConfigError(f"alert rules {where} rejected:\n{_describe(exc, doc)}") from exc


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules file, validated; the packaged alert_rules.toml when no path is given."""
    if path is None:
        text = resources.files("smap_shared.config").joinpath("alert_rules.toml").read_text()
        return parse_rules(text, "packaged alert_rules.toml")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RuleConfigError(f"alert rules {path}: cannot read: {exc}") from exc
    return parse_rules(text, str(path))
