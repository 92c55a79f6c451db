"""Message schemas, defined once and used by producers and consumers alike.

Topic `smap-telemetry`          : TelemetryMessage (key: stream id, e.g. "SAT-001/A-1")
Celery task kwargs              : InferenceBatch (micro-batch) or InferenceTask (one frame)
Topic `smap-inference-results`  : InferenceResult (key: stream id)
Topic `smap-telemetry-dlq`      : DeadLetter
Topic `smap-alerts`             : AlertEvent (key: stream id)
"""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, field_validator

_JSON = msgspec.json.Encoder()
SENSOR_KEY = re.compile(r"^sensor_(\d+)$")
#: The largest HTTP request body the dashboard's and the alert manager's APIs read (an acknowledgement is
#: ~100 bytes); a larger one answers 413 before any of it is parsed.
MAX_BODY_BYTES = 64 * 1024


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (ISO-8601, e.g. 2026-11-28T09:00:00Z)")
    return ts.astimezone(UTC)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


UtcDatetime = Annotated[datetime, AfterValidator(_utc), PlainSerializer(_iso, return_type=str)]


def utc_now() -> datetime:
    return datetime.now(UTC)


def sensor_keys(n: int) -> list[str]:
    return [f"sensor_{i}" for i in range(n)]


def _sensor_rank(key: str) -> tuple[int, str]:
    m = SENSOR_KEY.match(key)
    return (int(m.group(1)), key) if m else (1 << 30, key)


@lru_cache(maxsize=1024)  # a fleet has a few distinct key sets (one per sensor count)
def sensor_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """Sensor keys in index order (sensor_2 before sensor_10), anything else after them by name."""
    return tuple(sorted(keys, key=_sensor_rank))


@lru_cache(maxsize=64)
def _canonical_keys(n: int) -> frozenset[str]:
    return frozenset(sensor_keys(n))


def _check_sensor_dict(d: dict[str, Any], what: str) -> None:
    if not d:
        raise ValueError(f"{what} is empty")
    if d.keys() == _canonical_keys(len(d)):  # every frame on the hot path: one set comparison, not n regexes
        return
    idx = []
    for key in d:
        m = SENSOR_KEY.match(key)
        if not m:
            raise ValueError(f"{what}: key {key!r} is not of the form sensor_<i>")
        idx.append(int(m.group(1)))
    if sorted(idx) != list(range(len(idx))):
        raise ValueError(f"{what}: keys must be sensor_0..sensor_{len(idx) - 1} without gaps")


def ordered_values(d: dict[str, float]) -> list[float]:
    """Sensor values in sensor index order (sensor_0, sensor_1, ...)."""
    return [d[k] for k in sensor_keys(len(d))]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TelemetryMessage(_Frozen):
    satellite_id: str = Field(min_length=1, max_length=64)
    entity: str = Field(min_length=1, max_length=64)
    timestamp: UtcDatetime
    index: int = Field(ge=0)
    sensors: dict[str, float]
    ground_truth_labels: dict[str, int] = Field(default_factory=dict)
    #: The source's run (optional): the simulator marks each run and each lap of a loop with a new id and its
    #: first frame with sequence_start, and the model starts the stream over there; a frame of an earlier run
    #: is refused. Frames without them keep the index-only rules (smap_shared/model/streams.py).
    run_id: str | None = Field(default=None, min_length=1, max_length=64)
    sequence_start: bool = False

    @field_validator("sensors")
    @classmethod
    def _sensors(cls, v: dict[str, float]) -> dict[str, float]:
        _check_sensor_dict(v, "sensors")
        bad = [k for k, x in v.items() if not math.isfinite(x)]
        if bad:
            raise ValueError(f"sensors not finite (NaN/Inf): {', '.join(bad)}")
        return v

    @field_validator("ground_truth_labels")
    @classmethod
    def _labels(cls, v: dict[str, int]) -> dict[str, int]:
        if v:
            _check_sensor_dict(v, "ground_truth_labels")
            if any(x not in (0, 1) for x in v.values()):
                raise ValueError("ground_truth_labels must be 0 or 1")
        return v

    @property
    def stream_id(self) -> str:
        return f"{self.satellite_id}/{self.entity}"

    def sensor_vector(self) -> list[float]:
        return ordered_values(self.sensors)


class InferenceTask(_Frozen):
    """kwargs of Celery task `smap_analysis.tasks.run_omnianomaly_inference`."""

    satellite_id: str
    entity: str
    sensor_values: list[float] = Field(min_length=1)
    index: int = Field(ge=0)
    timestamp: UtcDatetime
    ground_truth_labels: dict[str, int] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, min_length=1, max_length=64)
    sequence_start: bool = False

    @property
    def stream_id(self) -> str:
        return f"{self.satellite_id}/{self.entity}"

    @classmethod
    def from_telemetry(cls, msg: TelemetryMessage) -> InferenceTask:
        return cls(
            satellite_id=msg.satellite_id, entity=msg.entity, sensor_values=msg.sensor_vector(),
            index=msg.index, timestamp=msg.timestamp, ground_truth_labels=msg.ground_truth_labels,
            run_id=msg.run_id, sequence_start=msg.sequence_start,
        )


class InferenceBatch(_Frozen):
    """kwargs of Celery task `smap_analysis.tasks.run_omnianomaly_batch`: frames of one shard in the order
    they were read (each stream's frames in its order)."""

    frames: list[InferenceTask] = Field(min_length=1)


class InferenceResult(_Frozen):
    stream_id: str
    satellite_id: str
    entity: str
    model_name: str
    timestamp: UtcDatetime
    index: int
    sensor_values: dict[str, float]
    reconstruction: dict[str, float]
    sensor_error: dict[str, float]
    anomaly_score: float
    anomaly_detected: bool
    threshold: float
    inference_time_ms: float
    #: The value the deployed decision rule compares with `threshold` (its units; not anomaly_score's for
    #: the causal rule). None in results from before this field existed.
    detector_signal: float | None = None
    #: Why `anomaly_detected` is set: bits of smap_shared.model.rules.ALARM_CAUSES (names in `alarm_causes`),
    #: every cause that fired since the alarm began; 0 without an alarm (and in results from before it).
    alarm_cause: int = Field(default=0, ge=0)
    ground_truth_labels: dict[str, int] = Field(default_factory=dict)
    duplicate: bool = False  # the model had already applied this index (a redelivery): outputs replayed
    gap: int = 0  # steps skipped before this one (indices never received)

    @property
    def alarm_causes(self) -> list[str]:
        from smap_shared.model.rules import cause_names  # the rule defines the causes; keep this module light

        return cause_names(self.alarm_cause)

    def to_json(self) -> bytes:
        """`model_dump_json()`, JSON-equal (tests compare every field), for the hot path: the worker encodes
        every result, and msgspec on the field values takes ~6 us where pydantic's serializer took ~25."""
        return _JSON.encode({k: _iso(v) if isinstance(v, datetime) else v for k, v in self.__dict__.items()})


class DeadLetter(_Frozen):
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: str | None
    raw_payload: str  # the payload's first bytes at most (see payload_truncated), encoded as below
    payload_encoding: str = "utf-8"  # or "base64" when the bytes were not valid UTF-8
    service: str
    received_at: UtcDatetime = Field(default_factory=utc_now)
    # Of the original payload, whole, however much of it raw_payload keeps; -1 / "" in letters from before
    # these fields existed.
    payload_size: int = -1  # bytes
    payload_sha256: str = ""  # hex digest of its bytes
    payload_truncated: bool = False  # raw_payload keeps only a prefix of it

    @staticmethod
    def encode_payload(raw: bytes) -> tuple[str, str]:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"


AlertSeverity = Literal["info", "warning", "critical"]
AlertState = Literal["pending", "firing", "resolved"]


class SensorContribution(_Frozen):
    id: str  # sensor_<i>
    error: float  # its reconstruction error at that step


class Crossing(_Frozen):
    """What a rule compared at a frame: `value` against `threshold` (`ratio` = value / threshold)."""

    what: Literal["detector_signal", "anomaly_score", "sensor_error"]
    value: float
    threshold: float

    @property
    def ratio(self) -> float | None:
        return self.value / self.threshold if self.threshold else None


class TripEvidence(_Frozen):
    """The frame that opened an alert (its rule's first matching frame): the sensor with the largest
    reconstruction error there, its value against its reconstruction, what was crossed and by how much, and
    why the detector alarmed. Notifications and the page show it; the dashboard link opens that time."""

    index: int
    at: UtcDatetime
    sensor: str
    value: float
    reconstruction: float
    error: float
    anomaly_score: float
    crossing: Crossing | None = None  # None: the frame carries no detector signal (results of old models)
    alarm_causes: list[str] = Field(default_factory=list)


class AlertEvent(_Frozen):
    """One alert lifecycle event (a transition or an acknowledgement), published by the alert manager
    and forwarded to dashboard clients on the WebSocket."""

    type: Literal["smap_alert"] = "smap_alert"
    event: Literal["pending", "firing", "resolved", "acknowledged", "shelved", "unshelved"]
    alert_id: int
    rule: str
    severity: AlertSeverity
    state: AlertState
    satellite_id: str
    entity: str
    sensor: str | None = None  # set for sensor-scoped rules
    stream_id: str
    score: float  # anomaly_score at this event (at firing: the score at firing time)
    top_sensors: list[SensorContribution] = Field(default_factory=list)
    #: why the detector alarmed since the alert opened (InferenceResult.alarm_causes names); [] for a rule on
    #: the score alone while the detector did not alarm
    alarm_causes: list[str] = Field(default_factory=list)
    started_at: UtcDatetime  # first frame of the condition
    at: UtcDatetime  # when this event happened (frame timestamp)
    acknowledged: bool = False
    shelved: bool = False  # an active shelf covers the alert: recorded, its notifications held
    evidence: TripEvidence | None = None  # the frame that opened the alert
    message: str = ""
