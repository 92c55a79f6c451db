"""Query parameters of the history API: time range and step, parsed and bounded before any query runs."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

#: A range query may return at most this many points per series (VictoriaMetrics' own cap is 30,000).
MAX_POINTS = 11_000
#: The longest window one request may ask for (VictoriaMetrics' default retention is one month).
MAX_RANGE_S = 31 * 86_400
DEFAULT_WINDOW_S = 3_600.0
#: Without a step the window is cut into about this many points.
DEFAULT_POINTS = 720
MIN_STEP_S = 0.001  # VictoriaMetrics' resolution: one millisecond
DEFAULT_LOOKBACK_S = 600.0  # "latest values": how far back a sample still counts as current

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, None: 1.0}


class ParamError(ValueError):
    """A query parameter is malformed or out of bounds (the API answers 400 with this message)."""


def parse_duration(text: str, name: str) -> float:
    """Seconds of `30`, `30s`, `1500ms`, `5m`, `24h`, `1d`; ParamError otherwise (also for 0)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ParamError(f"{name}: {text!r} is not a duration (e.g. 30s, 5m, 24h)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ParamError(f"{name}: must be positive")
    return seconds


def parse_time(text: str, name: str) -> float:
    """Unix seconds from `1764320400`, `1764320400.5` or RFC 3339 with a zone (`2026-11-28T09:00:00Z`)."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        return _rfc3339(raw, text, name)
    if not math.isfinite(value) or value < 0:
        raise ParamError(f"{name}: {text!r} is not a valid Unix time")
    return value


def _rfc3339(raw: str, text: str, name: str) -> float:
    try:
        ts = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ParamError(f"{name}: {text!r} is neither Unix seconds nor RFC 3339") from None
    if ts.tzinfo is None:
        raise ParamError(f"{name}: {text!r} has no time zone (add Z or +00:00)")
    return ts.astimezone(UTC).timestamp()


@dataclass(frozen=True)
class TimeRange:
    start: float  # Unix seconds
    end: float
    step: float  # seconds between points; each point aggregates the samples of (t - step, t]

    @property
    def points(self) -> int:
        return int((self.end - self.start) // self.step) + 1

    @property
    def step_ms(self) -> int:
        return max(1, round(self.step * 1000))


def parse_range(query: Mapping[str, str], now: float) -> TimeRange:
    """`start`, `end` (Unix seconds or RFC 3339), `window` (a duration, used when `start` is absent) and
    `step` (a duration). Defaults: end = now, window = 1 h, step = window / 720 (at least 1 ms)."""
    end = parse_time(query["end"], "end") if "end" in query else now
    if "start" in query:
        if "window" in query:
            raise ParamError("give either start or window, not both")
        start = parse_time(query["start"], "start")
    else:
        window = parse_duration(query["window"], "window") if "window" in query else DEFAULT_WINDOW_S
        start = end - window
    if end <= start:
        raise ParamError("end must be after start")
    if end - start > MAX_RANGE_S:
        raise ParamError(f"the range may span at most {MAX_RANGE_S // 86_400} days")
    if "step" in query:
        step = parse_duration(query["step"], "step")
        if step < MIN_STEP_S:
            raise ParamError("step must be at least 1ms")
    else:
        step = max(MIN_STEP_S, round((end - start) / DEFAULT_POINTS, 3))
    tr = TimeRange(start=start, end=end, step=step)
    if tr.points > MAX_POINTS:
        raise ParamError(f"{tr.points} points per series (range / step); at most {MAX_POINTS}: raise step")
    return tr


def parse_lookback(query: Mapping[str, str]) -> float:
    return parse_duration(query["lookback"], "lookback") if "lookback" in query else DEFAULT_LOOKBACK_S
