"""Size limits of the validation and its dead letters, and property-based tests: whatever bytes arrive,
validation answers (a message or an Invalid of a known kind) and the dead letter fits in a Kafka request."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smap_shared.fleet import default_fleet
from smap_shared.schemas import DeadLetter, InferenceResult, TelemetryMessage, sensor_keys
from smap_shared.streaming import validation as v

WIDTH = 25
FLEET = default_fleet()
WIDTHS = dict.fromkeys(FLEET.fleet_entities(), WIDTH)
LETTER_MAX = 100 * 1024  # bytes of a DeadLetter's JSON, far under aiokafka's max_request_size (1 MiB)
FAST = settings(max_examples=200, deadline=None)


def _frame() -> dict[str, Any]:
    keys = sensor_keys(WIDTH)
    return {
        "satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-11-28T09:00:00.123Z", "index": 7,
        "sensors": {k: float(i) / 10 for i, k in enumerate(keys)},
        "ground_truth_labels": dict.fromkeys(keys, 0),
    }


def _letter(raw: bytes | None, invalid: v.Invalid | None = None, key: str | None = "SAT-001/A-1") -> DeadLetter:
    return v.dead_letter(invalid or v.Invalid(v.SCHEMA, "x"), raw=raw, topic="smap-telemetry", partition=3,
                         offset=2**40, key=key, service="smap-inference-trigger")


def _letter_bytes(letter: DeadLetter) -> bytes:
    return letter.model_dump_json().encode()  # what the trigger and the consumer send


def _stored(letter: DeadLetter) -> bytes:
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.raw_payload, validate=True)
    assert letter.payload_encoding == "utf-8"
    return letter.raw_payload.encode("utf-8")


def _check_letter(letter: DeadLetter, raw: bytes | None) -> None:
    data = raw or b""
    assert len(_letter_bytes(letter)) < LETTER_MAX
    assert (letter.payload_size, letter.payload_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    kept = _stored(letter)
    assert data.startswith(kept)
    assert len(kept) <= v.DEAD_LETTER_PAYLOAD_MAX
    assert letter.payload_truncated == (len(kept) < len(data))
    assert DeadLetter.model_validate_json(_letter_bytes(letter)) == letter


# --- size limits -----------------------------------------------------------------------------------------

BIG_TEXT = ("0123456789abcdef" * (5 * 2**20 // 16)).encode()  # 5 MiB of ASCII
BIG_BINARY = random.Random(14).randbytes(5 * 2**20)  # 5 MiB, not UTF-8
BIG_JSON = json.dumps(_frame() | {"notes": "x" * 1_200_000}).encode()  # the 1.2 MB frame of issue 14


@pytest.mark.parametrize(
    ("raw", "encoding"), [(BIG_TEXT, "utf-8"), (BIG_BINARY, "base64"), (BIG_JSON, "utf-8")],
    ids=["5MiB-text", "5MiB-binary", "1.2MB-json"],
)
def test_big_payloads_are_truncated_with_size_and_digest(raw: bytes, encoding: str) -> None:
    res = v.validate_telemetry(raw, FLEET, WIDTHS)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.TOO_LARGE
    assert str(len(raw)) in res.detail
    letter = _letter(raw, res)
    _check_letter(letter, raw)
    assert letter.payload_truncated
    assert letter.payload_encoding == encoding
    assert _stored(letter) == raw[: v.DEAD_LETTER_PAYLOAD_MAX]
    assert letter.reason.startswith("too_large: ")


def test_small_payloads_are_kept_whole() -> None:
    for raw in (b"{oops", b"\xff\x00", json.dumps(_frame()).encode(), b"", None):
        letter = _letter(raw)
        _check_letter(letter, raw)
        assert not letter.payload_truncated
        assert _stored(letter) == (raw or b"")
    assert _letter(b"{oops").raw_payload == "{oops"
    exact = b"a" * v.DEAD_LETTER_PAYLOAD_MAX
    assert (_letter(exact).raw_payload.encode(), _letter(exact).payload_truncated) == (exact, False)


def test_truncation_does_not_split_a_utf8_character() -> None:
    raw = ("€" * 30_000).encode()  # 3 bytes each: the 64 KiB cut falls inside a character
    letter = _letter(raw)
    _check_letter(letter, raw)
    assert letter.payload_encoding == "utf-8"
    assert letter.raw_payload == "€" * (v.DEAD_LETTER_PAYLOAD_MAX // 3)
    assert letter.payload_truncated


def test_escape_heavy_text_is_stored_as_base64() -> None:
    # Control characters take 6 bytes each in JSON ("\u0001"): such text is kept as base64 instead.
    raw = b"\x01" * 100_000
    letter = _letter(raw)
    _check_letter(letter, raw)
    assert letter.payload_encoding == "base64"
    assert len(letter.raw_payload) == v.DEAD_LETTER_ENCODED_MAX


def test_worst_case_letter_fits() -> None:
    # Everything at its cap, every part escape-heavy: reason and key of control characters, payload of quotes.
    letter = _letter(b'"' * v.DEAD_LETTER_PAYLOAD_MAX * 2, v.Invalid(v.SCHEMA, "\x01" * 10_000),
                     key="\x02" * 10_000)
    assert len(_letter_bytes(letter)) < LETTER_MAX
    assert len(letter.reason) == v.DEAD_LETTER_REASON_MAX
    assert letter.reason.endswith("…")
    assert letter.key is not None
    assert len(letter.key) == v.DEAD_LETTER_KEY_MAX


def test_lone_surrogates_in_reason_and_key_do_not_break_the_letter() -> None:
    letter = _letter(b"x", v.Invalid(v.SCHEMA, "bad key \ud800"), key="\udcff")
    assert (letter.reason, letter.key) == ("schema: bad key ?", "?")
    assert len(_letter_bytes(letter)) < LETTER_MAX


def test_too_large_is_checked_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(raw: bytes | None) -> Any:
        raise AssertionError("a too-large payload must not be parsed")

    monkeypatch.setattr(v, "parse_json", no_parse)
    res = v.validate_telemetry(b"{" * (v.MAX_TELEMETRY_BYTES + 1), FLEET, WIDTHS)
    assert isinstance(res, v.Invalid)
    assert res.kind == v.TOO_LARGE


def test_max_telemetry_bytes_is_inclusive() -> None:
    frame = json.dumps(_frame()).encode()
    at_max = frame[:-1] + b" " * (v.MAX_TELEMETRY_BYTES - len(frame)) + b"}"  # JSON allows the whitespace
    assert len(at_max) == v.MAX_TELEMETRY_BYTES
    assert isinstance(v.validate_telemetry(at_max, FLEET, WIDTHS), TelemetryMessage)
    over = v.validate_telemetry(at_max[:-1] + b" }", FLEET, WIDTHS)
    assert isinstance(over, v.Invalid)
    assert over.kind == v.TOO_LARGE


def test_too_large_is_a_reason_kind_and_older_letters_still_parse() -> None:
    assert v.TOO_LARGE in v.REASON_KINDS
    old = {"reason": "schema: x", "source_topic": "t", "partition": 0, "offset": 1, "key": None,
           "raw_payload": "{}", "payload_encoding": "utf-8", "service": "s",
           "received_at": "2026-11-28T09:00:00Z"}
    letter = DeadLetter.model_validate_json(json.dumps(old))
    assert (letter.payload_size, letter.payload_sha256, letter.payload_truncated) == (-1, "", False)


# --- property-based --------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=30,
)

# A replacement value of a frame's field: wrong types, huge numbers, non-finite text, long strings.
ODD_VALUES = (
    JSON_VALUES
    | st.sampled_from([10**400, -(10**400), 2**64, -1, 0, "", "NaN", "Infinity", "-Infinity", [], {}])
    | st.text(min_size=1_000, max_size=5_000)
    | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
)
NUMBER_TEXT = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "1" * 400])


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid A-1 frame (SAT-001, 25 sensors) with one field dropped, replaced or added, as bytes."""
    msg = _frame()
    how = draw(st.sampled_from(["drop", "replace", "extra", "sensor", "label", "number_text"]))
    if how in ("drop", "replace"):
        field = draw(st.sampled_from(sorted(msg)))
        if how == "drop":
            del msg[field]
        else:
            msg[field] = draw(ODD_VALUES)
    elif how == "extra":
        msg[draw(st.text(max_size=30).filter(lambda k: k not in msg))] = draw(ODD_VALUES)
    elif how in ("sensor", "label"):
        part = msg["sensors" if how == "sensor" else "ground_truth_labels"]
        key = draw(st.sampled_from(sorted(part)) | st.text(max_size=30))
        if draw(st.booleans()) and key in part:
            del part[key]
        else:
            part[key] = draw(ODD_VALUES)
    else:  # a non-JSON number spliced into the text, where json.loads would take it
        text = json.dumps(msg).replace('"sensor_3": 0.3', f'"sensor_3": {draw(NUMBER_TEXT)}')
        return text.encode()
    return json.dumps(msg).encode()


def _check_validation(raw: bytes | None, res: object, model: type) -> None:
    assert isinstance(res, model | v.Invalid)
    if isinstance(res, v.Invalid):
        assert res.kind in v.REASON_KINDS
        assert res.reason.startswith(f"{res.kind}: ")
        _check_letter(_letter(raw, res), raw)
    elif isinstance(res, TelemetryMessage):
        assert len(res.sensors) == WIDTHS[res.entity]
        assert all(math.isfinite(x) for x in res.sensor_vector())


@FAST
@given(st.binary(max_size=4096) | st.none())
def test_any_bytes_validate_without_raising(raw: bytes | None) -> None:
    _check_validation(raw, v.validate_telemetry(raw, FLEET, WIDTHS), TelemetryMessage)


@FAST
@given(JSON_VALUES)
def test_any_json_validates_without_raising(obj: Any) -> None:
    raw = json.dumps(obj).encode()
    _check_validation(raw, v.validate_telemetry(raw, FLEET, WIDTHS), TelemetryMessage)


@FAST
@given(mutated_frames())
def test_mutated_frames_validate_without_raising(raw: bytes) -> None:
    _check_validation(raw, v.validate_telemetry(raw, FLEET, WIDTHS), TelemetryMessage)


@FAST
@given(st.binary(max_size=4096) | st.none() | JSON_VALUES.map(lambda o: json.dumps(o).encode()))
def test_any_result_bytes_validate_without_raising(raw: bytes | None) -> None:
    _check_validation(raw, v.validate_result(raw), InferenceResult)


@FAST
@given(
    kind=st.sampled_from(v.REASON_KINDS),
    detail=st.text(max_size=5_000),
    key=st.none() | st.text(max_size=2_000),
    head=st.binary(max_size=256),
    size=st.integers(min_value=0, max_value=3 * v.DEAD_LETTER_PAYLOAD_MAX),
    fill=st.sampled_from([b"a", b'"', b"\x00", b"\xff", "€".encode(), "😀".encode(), b"\\"]),
)
def test_any_dead_letter_fits(kind: str, detail: str, key: str | None, head: bytes, size: int,
                              fill: bytes) -> None:
    raw = head + fill * (size // len(fill))
    letter = _letter(raw, v.Invalid(kind, detail), key=key)
    _check_letter(letter, raw)


def _same(a: object, b: object) -> bool:
    """Equal JSON values, floats by their bits (0.0 vs -0.0 and int vs float count as different)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a.hex() == b.hex()
    return a == b


@FAST
@given(st.binary(max_size=4096) | JSON_VALUES.map(lambda o: json.dumps(o).encode()) | mutated_frames())
def test_fast_json_path_answers_as_the_strict_stdlib_parser(raw: bytes) -> None:
    """parse_json's orjson path accepts nothing the stdlib path refuses, and parses to the same values."""
    fast, slow = v.parse_json(raw), v.parse_json_stdlib(raw)
    if isinstance(slow, v.Invalid):
        assert fast == slow
    else:
        assert _same(fast, slow)


@pytest.mark.parametrize("text", ["NaN", "-Infinity", "1e999", "-1e400"])
def test_fast_json_path_names_a_non_finite_number(text: str) -> None:
    res = v.parse_json(f'{{"x": {text}}}'.encode())
    assert isinstance(res, v.Invalid) and res.kind == v.NON_FINITE


def test_fast_json_path_keeps_what_only_the_stdlib_parses() -> None:
    big = "1" * 400  # past 64 bits (orjson would make it a float)
    assert v.parse_json(f'{{"x": {big}}}'.encode()) == {"x": int(big)}
