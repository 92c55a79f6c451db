"""Raw Kafka bytes -> validated message, or the reason it goes to a dead-letter topic.

Reasons are `<kind>: <detail>`; the kind (one of REASON_KINDS) is also the DLQ counter's label, so the
label set stays small while the DeadLetter keeps the full detail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from smap_shared.data import DataSource
from smap_shared.fleet import Fleet, FleetError
from smap_shared.schemas import DeadLetter, InferenceResult, TelemetryMessage

M = TypeVar("M", bound=BaseModel)

INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NON_FINITE = "non_finite"
SCHEMA = "schema"
UNKNOWN_STREAM = "unknown_stream"
SENSOR_COUNT = "sensor_count"
REASON_KINDS = (INVALID_UTF8, INVALID_JSON, NON_FINITE, SCHEMA, UNKNOWN_STREAM, SENSOR_COUNT)


@dataclass(frozen=True)
class Invalid:
    kind: str
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}"


class _NonFiniteError(ValueError):
    pass


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 overflows to inf
        raise _NonFiniteError(f"number {text} is not finite")
    return value


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity/-Infinity (not JSON); a model input must never see them
    raise _NonFiniteError(f"{name} is not a JSON number")


def parse_json(raw: bytes | None) -> Any | Invalid:
    """Strict JSON: UTF-8, standard numbers only (no NaN/Infinity, no overflow to inf)."""
    if raw is None:
        return Invalid(INVALID_JSON, "empty message (no value)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(INVALID_UTF8, str(exc))
    try:
        return json.loads(text, parse_float=_strict_float, parse_constant=_reject_constant)
    except _NonFiniteError as exc:
        return Invalid(NON_FINITE, str(exc))
    except ValueError as exc:  # JSONDecodeError
        return Invalid(INVALID_JSON, str(exc))


def _schema_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def entity_widths(fleet: Fleet, source: DataSource) -> dict[str, int]:
    """Sensor count of every fleet entity, from its data (the model's input width)."""
    return {entity: source.load(entity).n_sensors for entity in fleet.fleet_entities()}


def _parse_model(raw: bytes | None, model: type[M]) -> M | Invalid:
    obj = parse_json(raw)
    if isinstance(obj, Invalid):
        return obj
    if not isinstance(obj, dict):
        return Invalid(SCHEMA, f"expected a JSON object, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        return Invalid(SCHEMA, _schema_detail(exc))


def validate_telemetry(
    raw: bytes | None, fleet: Fleet, widths: Mapping[str, int]
) -> TelemetryMessage | Invalid:
    """A telemetry frame of a known stream with its entity's sensor count, or why not."""
    msg = _parse_model(raw, TelemetryMessage)
    if isinstance(msg, Invalid):
        return msg
    try:
        fleet.check_stream(msg.satellite_id, msg.entity)
    except FleetError as exc:
        return Invalid(UNKNOWN_STREAM, str(exc))
    expected = widths.get(msg.entity)
    if expected is None:
        return Invalid(UNKNOWN_STREAM, f"no data width known for entity {msg.entity!r}")
    if len(msg.sensors) != expected:
        return Invalid(SENSOR_COUNT, f"{msg.entity} has {expected} sensors, message has {len(msg.sensors)}")
    return msg


def validate_result(raw: bytes | None) -> InferenceResult | Invalid:
    result = _parse_model(raw, InferenceResult)
    if isinstance(result, Invalid):
        return result
    sensors = set(result.sensor_values)
    if not sensors or set(result.reconstruction) != sensors or set(result.sensor_error) != sensors:
        return Invalid(SCHEMA, "sensor_values, reconstruction and sensor_error must have the same sensors")
    if result.stream_id != f"{result.satellite_id}/{result.entity}":
        return Invalid(SCHEMA, f"stream_id {result.stream_id!r} does not match satellite_id/entity")
    return result


def dead_letter(
    invalid: Invalid, *, raw: bytes | None, topic: str, partition: int, offset: int, key: str | None,
    service: str,
) -> DeadLetter:
    payload, encoding = DeadLetter.encode_payload(raw or b"")
    return DeadLetter(
        reason=invalid.reason, source_topic=topic, partition=partition, offset=offset, key=key,
        raw_payload=payload, payload_encoding=encoding, service=service,
    )
