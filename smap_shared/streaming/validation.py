"""Raw Kafka bytes -> validated message, or the reason it goes to a dead-letter topic.

Reasons are `<kind>: <detail>`; the kind (one of REASON_KINDS) is also the DLQ counter's label, so the
label set stays small while the DeadLetter keeps the detail.

A dead letter always fits in a Kafka request (aiokafka's max_request_size, 1 MiB by default), whatever
arrived: it keeps the first DEAD_LETTER_PAYLOAD_MAX bytes of the payload with the whole payload's size and
sha256, a reason of at most DEAD_LETTER_REASON_MAX characters and a key of at most DEAD_LETTER_KEY_MAX, so
its JSON stays under 100 KiB. Otherwise a letter over the limit fails with MessageSizeTooLargeError on
every retry and the partition behind it never moves again. See docs/limits.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import numpy as np
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
TOO_LARGE = "too_large"
IMPLAUSIBLE = "implausible"  # a sensor value far outside anything its entity's train split ever had
MODEL_REFUSED = "model_refused"  # the analysis worker: the model refused the frame (a permanent fault)
REASON_KINDS = (INVALID_UTF8, INVALID_JSON, NON_FINITE, SCHEMA, UNKNOWN_STREAM, SENSOR_COUNT, TOO_LARGE,
                IMPLAUSIBLE, MODEL_REFUSED)
#: The plausibility gate: a value is implausible beyond this many train spans (max - min, at least 1) outside
#: the train split's [min, max] of its sensor. Generous on purpose: a real anomaly (a level shift, a spike)
#: stays far inside; 1e308 or a unit error does not.
DEFAULT_PLAUSIBLE_SPANS = 10.0

# A SMAP frame (25 sensors and their labels) is under 2 KiB: a payload over this is rejected before parsing.
MAX_TELEMETRY_BYTES = 256 * 1024
# Of a dead-lettered payload, the DeadLetter keeps at most this many bytes (its first ones).
DEAD_LETTER_PAYLOAD_MAX = 64 * 1024
# The kept bytes as UTF-8 text, once escaped in the letter's JSON, may take at most what their base64 takes
# (control characters escape to 6 bytes each): past it they are stored as base64, which JSON never escapes.
DEAD_LETTER_ENCODED_MAX = 4 * ((DEAD_LETTER_PAYLOAD_MAX + 2) // 3)
DEAD_LETTER_REASON_MAX = 2000  # characters; a reason's detail may echo a part of the input
DEAD_LETTER_KEY_MAX = 256  # characters; a stream id is ~12


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


_fast_json = msgspec.json.Decoder()


def parse_json(raw: bytes | None) -> Any | Invalid:
    """Strict JSON: UTF-8, standard numbers only (no NaN/Infinity, no overflow to inf)."""
    if raw is None:
        return Invalid(INVALID_JSON, "empty message (no value)")
    # Hot path: msgspec is as strict as this function (it refuses invalid UTF-8, NaN/Infinity and numbers
    # that overflow to inf, and keeps integers of any size) and ~10x faster than json.loads with a
    # parse_float hook. Whatever it refuses goes through the stdlib path below, which names the reason (or
    # accepts what only msgspec refuses, e.g. a lone surrogate escape): both paths give the same answer
    # (tests/unit/streaming/test_validation_fuzz.py checks it on random input).
    try:
        return _fast_json.decode(raw)
    except msgspec.MsgspecError:
        return parse_json_stdlib(raw)


def parse_json_stdlib(raw: bytes) -> Any | Invalid:
    """parse_json without msgspec: slower, and the one that names why a payload is not strict JSON."""
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


@dataclass(frozen=True)
class SaneRange:
    """Per-sensor bounds of one entity's plausible values (see DEFAULT_PLAUSIBLE_SPANS)."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def first_violation(self, values: list[float]) -> str | None:
        for i, (v, lo, hi) in enumerate(zip(values, self.lo, self.hi, strict=True)):
            if not lo <= v <= hi:
                return f"sensor_{i} = {v:.6g} outside the plausible range [{lo:.6g}, {hi:.6g}]"
        return None


def sane_ranges(fleet: Fleet, source: DataSource, spans: float = DEFAULT_PLAUSIBLE_SPANS) -> dict[str, SaneRange]:
    """The plausible range of every fleet entity's sensors, from its train split."""
    out = {}
    for entity in fleet.fleet_entities():
        train = source.load(entity).train
        lo, hi = train.min(axis=0), train.max(axis=0)
        pad = spans * np.maximum(hi - lo, 1.0)
        out[entity] = SaneRange(tuple(float(v) for v in lo - pad), tuple(float(v) for v in hi + pad))
    return out


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
    raw: bytes | None, fleet: Fleet, widths: Mapping[str, int], ranges: Mapping[str, SaneRange] | None = None
) -> TelemetryMessage | Invalid:
    """A telemetry frame of a known stream with its entity's sensor count (and, given `ranges`, plausible
    values), or why not."""
    if raw is not None and len(raw) > MAX_TELEMETRY_BYTES:
        return Invalid(TOO_LARGE, f"{len(raw)} bytes, a telemetry frame has at most {MAX_TELEMETRY_BYTES}")
    msg = _parse_model(raw, TelemetryMessage)
    if isinstance(msg, Invalid):
        return msg
    problem = _stream_problem(msg, fleet, widths, ranges)
    return msg if problem is None else problem


def _stream_problem(
    msg: TelemetryMessage, fleet: Fleet, widths: Mapping[str, int], ranges: Mapping[str, SaneRange] | None
) -> Invalid | None:
    try:
        fleet.check_stream(msg.satellite_id, msg.entity)
    except FleetError as exc:
        return Invalid(UNKNOWN_STREAM, str(exc))
    expected = widths.get(msg.entity)
    if expected is None:
        return Invalid(UNKNOWN_STREAM, f"no data width known for entity {msg.entity!r}")
    if len(msg.sensors) != expected:
        return Invalid(SENSOR_COUNT, f"{msg.entity} has {expected} sensors, message has {len(msg.sensors)}")
    sane = ranges.get(msg.entity) if ranges is not None else None
    violation = sane.first_violation(msg.sensor_vector()) if sane is not None else None
    if violation is not None:
        return Invalid(IMPLAUSIBLE, f"{msg.stream_id}#{msg.index}: {violation}")
    return None


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


def _json_size(text: str) -> int:
    """Bytes of `text` as a JSON string's content (what pydantic writes: UTF-8, control characters escaped)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _kept_payload(raw: bytes) -> tuple[str, str, bool]:
    """(stored payload, its encoding, truncated) of a dead-lettered payload; see DEAD_LETTER_PAYLOAD_MAX."""
    kept = raw[:DEAD_LETTER_PAYLOAD_MAX]
    truncated = len(kept) < len(raw)
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = None
        # The cut may have split a multi-byte character: back off to its start when that is the only flaw.
        if truncated and exc.end == len(kept) and exc.reason == "unexpected end of data":
            kept = kept[: exc.start]
            text = kept.decode("utf-8")
    if text is not None and _json_size(text) <= DEAD_LETTER_ENCODED_MAX:
        return text, "utf-8", truncated
    return base64.b64encode(kept).decode("ascii"), "base64", truncated


def _cap(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, lone surrogates (not encodable, so not valid in JSON) as '?'."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", errors="replace").decode("utf-8")


def dead_letter(
    invalid: Invalid, *, raw: bytes | None, topic: str, partition: int, offset: int, key: str | None,
    service: str,
) -> DeadLetter:
    """The DLQ record of an invalid message; its JSON stays under 100 KiB whatever `raw` and `key` are."""
    data = raw or b""
    payload, encoding, truncated = _kept_payload(data)
    return DeadLetter(
        reason=_cap(invalid.reason, DEAD_LETTER_REASON_MAX), source_topic=topic, partition=partition,
        offset=offset, key=None if key is None else _cap(key, DEAD_LETTER_KEY_MAX),
        raw_payload=payload, payload_encoding=encoding, service=service,
        payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest(), payload_truncated=truncated,
    )
