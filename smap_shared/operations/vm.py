"""VictoriaMetrics query client for the operation server: range and instant queries with typed errors.

Every failure to get an answer (refused connection, timeout, 5xx) is VictoriaUnavailableError, which the API
turns into 503; a query VictoriaMetrics rejects (4xx) is VictoriaQueryError, a bug of ours (500).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from smap_shared.operations.params import TimeRange


class VictoriaUnavailableError(RuntimeError):
    """VictoriaMetrics could not be reached or failed (the API answers 503)."""


class VictoriaQueryError(RuntimeError):
    """VictoriaMetrics rejected the query (4xx)."""


@dataclass(frozen=True)
class Series:
    metric: dict[str, str]
    timestamps: list[float]  # Unix seconds
    values: list[float | None]  # None: NaN/Inf (JSON has neither)

    @property
    def name(self) -> str:
        return self.metric.get("__name__", "")

    @property
    def stream(self) -> tuple[str, str]:
        """(satellite_id, entity) of the series' labels ("" for a missing one)."""
        return self.metric.get("satellite_id", ""), self.metric.get("entity", "")


def selector(names: Sequence[str], labels: Mapping[str, str]) -> str:
    """`{__name__=~"a|b",k="v",...}` with the label values escaped for MetricsQL string literals."""
    parts = [f'__name__=~"{"|".join(names)}"'] if len(names) > 1 else [f'__name__="{names[0]}"']
    for key, value in labels.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


def rollup(func: str, names: Sequence[str], labels: Mapping[str, str], window_ms: int) -> str:
    """`func(selector[window]) keep_metric_names`: one query for several metrics, names kept apart."""
    return f"{func}({selector(names, labels)}[{window_ms}ms]) keep_metric_names"


def _number(raw: Any) -> float | None:
    value = float(raw)
    return value if math.isfinite(value) else None


def parse_matrix(body: Mapping[str, Any]) -> list[Series]:
    """The `data.result` of a query_range (matrix) or query (vector) answer."""
    data = body.get("data") or {}
    out = []
    for item in data.get("result") or []:
        pairs = item["values"] if "values" in item else ([item["value"]] if item.get("value") else [])
        out.append(Series(
            metric=dict(item.get("metric") or {}),
            timestamps=[float(t) for t, _ in pairs],
            values=[_number(v) for _, v in pairs],
        ))
    return out


class SampleLimitError(ValueError):
    """An export would hold more samples than the caller allows (a client error: narrow the range)."""


class VictoriaClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _get(self, path: str, params: Mapping[str, str]) -> list[Series]:
        try:
            async with self.session.get(self.base_url + path, params=params, timeout=self.timeout) as resp:
                if resp.status >= 500:
                    raise VictoriaUnavailableError(f"VictoriaMetrics answered {resp.status}")
                if resp.status >= 400:
                    text = (await resp.text())[:300]
                    raise VictoriaQueryError(f"VictoriaMetrics rejected the query ({resp.status}): {text}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise VictoriaUnavailableError(f"VictoriaMetrics unreachable: {exc!r}") from exc
        except ValueError as exc:  # not JSON
            raise VictoriaUnavailableError(f"VictoriaMetrics answered something that is not JSON: {exc}") from exc
        if body.get("status") != "success":
            raise VictoriaQueryError(f"VictoriaMetrics query failed: {body.get('error', body)}")
        return parse_matrix(body)

    async def query_range(self, query: str, tr: TimeRange) -> list[Series]:
        # nocache: the newest points must never come from a cached older answer
        params = {"query": query, "start": f"{tr.start:.3f}", "end": f"{tr.end:.3f}",
                  "step": f"{tr.step_ms}ms", "nocache": "1"}
        return await self._get("/api/v1/query_range", params)

    async def query(self, query: str, at: float) -> list[Series]:
        return await self._get("/api/v1/query", {"query": query, "time": f"{at:.3f}", "nocache": "1"})

    async def export(self, match: str, start: float, end: float, max_samples: int) -> list[Series]:
        """Every raw sample of the series matching `match` in [start, end] (/api/v1/export: no step, no
        rollup); SampleLimitError past `max_samples` in all."""
        params = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        out: list[Series] = []
        total = 0
        try:
            async with self.session.get(self.base_url + "/api/v1/export", params=params,
                                        timeout=self.timeout) as resp:
                if resp.status >= 500:
                    raise VictoriaUnavailableError(f"VictoriaMetrics answered {resp.status}")
                if resp.status >= 400:
                    raise VictoriaQueryError(f"VictoriaMetrics rejected the export ({resp.status}): "
                                             f"{(await resp.text())[:300]}")
                buffer = b""
                async for chunk in resp.content.iter_chunked(1 << 16):  # one line per series: can be long
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            total += self._export_line(line, out)
                    if total > max_samples or len(buffer) > max_samples * 64:
                        raise SampleLimitError(f"more than {max_samples} samples in the range: narrow it")
                if buffer.strip():
                    total += self._export_line(buffer, out)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise VictoriaUnavailableError(f"VictoriaMetrics unreachable: {exc!r}") from exc
        return out

    @staticmethod
    def _export_line(line: bytes, out: list[Series]) -> int:
        item = json.loads(line)
        out.append(Series(dict(item["metric"]), [t / 1000 for t in item["timestamps"]],
                          [_number(v) for v in item["values"]]))
        return len(item["timestamps"])

    async def healthy(self) -> bool:
        try:
            async with self.session.get(self.base_url + "/health", timeout=self.timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


def align(series_by_key: Mapping[str, Series | None]) -> tuple[list[float], dict[str, list[float | None]]]:
    """Put several series on one time axis (the union of their timestamps); None where one has no point."""
    stamps = sorted({t for s in series_by_key.values() if s is not None for t in s.timestamps})
    index = {t: i for i, t in enumerate(stamps)}
    columns: dict[str, list[float | None]] = {}
    for key, s in series_by_key.items():
        col: list[float | None] = [None] * len(stamps)
        if s is not None:
            for t, v in zip(s.timestamps, s.values, strict=True):
                col[index[t]] = v
        columns[key] = col
    return stamps, columns
