"""Time range and step parsing of the history API: defaults, formats and every bound."""

from __future__ import annotations

import pytest

from smap_shared.operations.params import (
    DEFAULT_POINTS,
    MAX_POINTS,
    ParamError,
    TimeRange,
    parse_duration,
    parse_lookback,
    parse_range,
    parse_time,
)

NOW = 1_795_860_000.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("30s", 30.0), ("1500ms", 1.5), ("5m", 300.0), ("24h", 86_400.0), ("1d", 86_400.0),
    ("0.5s", 0.5), (" 2m ", 120.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "step") == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5s", "5 minutes", "5w", "abc", "1e3s", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ParamError, match="step"):
        parse_duration(text, "step")


def test_times() -> None:
    assert parse_time("1795860000", "end") == NOW
    assert parse_time("1795860000.25", "end") == NOW + 0.25
    assert parse_time("2026-11-28T09:00:00Z", "end") == 1_795_856_400.0
    assert parse_time("2026-11-28T10:00:00+01:00", "end") == 1_795_856_400.0
    for bad in ("2026-11-28T09:00:00", "yesterday", "-1", "inf", "nan"):
        with pytest.raises(ParamError, match="end"):
            parse_time(bad, "end")


def test_defaults_are_the_last_hour_in_720_points() -> None:
    tr = parse_range({}, NOW)
    assert (tr.start, tr.end) == (NOW - 3600, NOW)
    assert tr.step == 3600 / DEFAULT_POINTS == 5.0
    assert tr.points == DEFAULT_POINTS + 1


def test_explicit_range_and_window() -> None:
    tr = parse_range({"start": "1795850000", "end": "1795860000", "step": "30s"}, NOW)
    assert tr == TimeRange(1_795_850_000.0, NOW, 30.0)
    assert tr.step_ms == 30_000
    tr = parse_range({"window": "24h", "step": "30s"}, NOW)
    assert (tr.start, tr.end, tr.points) == (NOW - 86_400, NOW, 2_881)
    tr = parse_range({"window": "24h"}, NOW)
    assert tr.step == 120.0


@pytest.mark.parametrize(("query", "message"), [
    ({"start": "1795860000", "end": "1795850000"}, "end must be after start"),
    ({"start": "1795860000", "end": "1795860000"}, "end must be after start"),
    ({"start": "1795850000", "window": "1h"}, "either start or window"),
    ({"window": "40d"}, "at most 31 days"),
    ({"window": "24h", "step": "1s"}, f"at most {MAX_POINTS}"),
    ({"step": "0.0001s"}, "at least 1ms"),
    ({"start": "soon"}, "start"),
    ({"step": "fast"}, "step"),
])
def test_bad_ranges(query: dict[str, str], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        parse_range(query, NOW)


def test_the_point_limit_is_inclusive() -> None:
    step = 10.0
    ok = parse_range({"start": str(NOW - step * (MAX_POINTS - 1)), "end": str(NOW), "step": "10s"}, NOW)
    assert ok.points == MAX_POINTS
    with pytest.raises(ParamError):
        parse_range({"start": str(NOW - step * MAX_POINTS), "end": str(NOW), "step": "10s"}, NOW)


def test_lookback() -> None:
    assert parse_lookback({}) == 600.0
    assert parse_lookback({"lookback": "2m"}) == 120.0
    with pytest.raises(ParamError, match="lookback"):
        parse_lookback({"lookback": "-1"})
