"""REST API of the operation server: the fleet, an entity's overview and one sensor's history, read from
VictoriaMetrics with range queries; the alert manager's API proxied under the same origin.

Each point of a series aggregates the samples of (t - step, t]: the maximum for scores, flags and errors
(so a short anomaly stays visible at a coarse step), the last value for sensor values, reconstructions
and the threshold. With step equal to the data's cadence that is exactly the stored sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from smap_shared.alerting.api import ROUTES as ALERT_ROUTES
from smap_shared.auth.web import FORWARDED_CREDENTIALS
from smap_shared.fleet import Fleet, FleetError
from smap_shared.http import json_error
from smap_shared.model.rules import ALARM_CAUSES
from smap_shared.operations.ingest import (
    MAX_INGEST_BYTES,
    BatchError,
    BrokerUnavailableError,
    TelemetryWriter,
    check_batch,
)
from smap_shared.operations.params import (
    ParamError,
    TimeRange,
    parse_duration,
    parse_lookback,
    parse_range,
    parse_time,
)
from smap_shared.operations.performance import performance_body
from smap_shared.operations.vm import (
    SampleLimitError,
    Series,
    VictoriaClient,
    VictoriaUnavailableError,
    align,
    rollup,
)
from smap_shared.schemas import SENSOR_KEY
from smap_shared.streaming.validation import SaneRange

log = logging.getLogger(__name__)

DEFAULT_STALE_S = 60.0
MAX_FLEET_ALERTS = 1000  # the alert API's largest page
MAX_PERFORMANCE_SAMPLES = 1_000_000  # per series kind in one request: 1,000 streams x 16 min at 1 Hz (~130 MB)

SCORE, DETECTED, THRESHOLD = "smap_anomaly_score", "smap_anomaly_detected", "smap_anomaly_threshold"
SIGNAL, GROUND_TRUTH, CAUSE = "smap_detector_signal", "smap_ground_truth_anomaly", "smap_alarm_cause"
VALUE, RECON, ERROR, SENSOR_GT = ("smap_sensor_value", "smap_sensor_reconstruction", "smap_sensor_error",
                                  "smap_sensor_ground_truth")


class NotFoundError(LookupError):
    """An unknown satellite, entity or sensor (404)."""


@dataclass(frozen=True)
class Catalog:
    """What exists: the fleet and the sensor count of every fleet entity."""

    fleet: Fleet
    widths: Mapping[str, int]

    def satellite_of(self, entity: str, satellite_id: str | None = None) -> str:
        if entity not in self.widths:
            known = ", ".join(self.fleet.fleet_entities())
            raise NotFoundError(f"unknown entity {entity!r}; known: {known}")
        try:
            return self.fleet.satellite_of(entity, satellite_id)
        except FleetError as exc:
            if satellite_id is not None:
                raise NotFoundError(str(exc)) from None
            raise ParamError(str(exc)) from None

    def check_sensor(self, entity: str, sensor: str) -> None:
        m = SENSOR_KEY.match(sensor)
        width = self.widths[entity]
        if not m or int(m.group(1)) >= width:
            raise NotFoundError(f"unknown sensor {sensor!r} of {entity}; known: sensor_0..sensor_{width - 1}")

    def sensors(self, entity: str) -> list[str]:
        return [f"sensor_{i}" for i in range(self.widths[entity])]


def _by_name(series: list[Series]) -> dict[str, Series]:
    return {s.name: s for s in series}


def _ints(values: list[float | None]) -> list[int | None]:
    return [None if v is None else int(v) for v in values]


def _latest(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def _range_fields(tr: TimeRange) -> dict[str, float]:
    return {"start": tr.start, "end": tr.end, "step": tr.step}


# ---------------------------------------------------------------- pure shaping (unit-tested)


def overview_body(satellite_id: str, entity: str, tr: TimeRange, series: list[Series]) -> dict[str, Any]:
    named = _by_name([s for s in series if s.name != CAUSE])
    # smap_alarm_cause has one series per cause: keyed by its cause label
    causes = {s.metric.get("cause", ""): s for s in series if s.name == CAUSE}
    stamps, cols = align({
        **{k: named.get(k) for k in (SCORE, DETECTED, THRESHOLD, SIGNAL, GROUND_TRUTH)},
        **{f"{CAUSE}:{c}": causes.get(c) for c in ALARM_CAUSES.values()},
    })
    detected = _ints(cols[DETECTED])
    current: dict[str, Any] = {"state": "unknown", "timestamp": None, "anomaly_score": None}
    for i in range(len(stamps) - 1, -1, -1):
        if cols[SCORE][i] is not None:
            state = "unknown" if detected[i] is None else ("anomaly" if detected[i] else "normal")
            current = {"state": state, "timestamp": stamps[i], "anomaly_score": cols[SCORE][i]}
            break
    return {
        "satellite_id": satellite_id, "entity": entity, **_range_fields(tr),
        "timestamps": stamps,
        "anomaly_score": cols[SCORE],
        "detected": detected,
        "detector_signal": cols[SIGNAL],
        "threshold": _latest(cols[THRESHOLD]),
        "threshold_series": cols[THRESHOLD],
        "ground_truth": _ints(cols[GROUND_TRUTH]) if GROUND_TRUTH in named else None,
        "alarm_causes": {c: _ints(cols[f"{CAUSE}:{c}"]) for c in ALARM_CAUSES.values()},
        "current": current,
    }


def sensor_body(
    satellite_id: str, entity: str, sensor: str, tr: TimeRange, series: list[Series]
) -> dict[str, Any]:
    named = _by_name(series)
    stamps, cols = align({k: named.get(k) for k in (VALUE, RECON, ERROR, SENSOR_GT)})
    return {
        "satellite_id": satellite_id, "entity": entity, "sensor": sensor, **_range_fields(tr),
        "timestamps": stamps,
        "actual": cols[VALUE],
        "reconstruction": cols[RECON],
        "error": cols[ERROR],
        "ground_truth": _ints(cols[SENSOR_GT]) if SENSOR_GT in named else None,
    }


def snapshot_body(entity: str, sensors: list[str], at: float, series: list[Series]) -> dict[str, Any]:
    """Latest value, reconstruction and error of every sensor (the per-sensor error bar chart)."""
    latest: dict[tuple[str, str], float | None] = {}
    stamp: float | None = None
    for s in series:
        if s.name == SCORE:  # tlast_over_time keeps the name: the latest frame's time
            stamp = s.values[0] if s.values else None
            continue
        latest[(s.name, s.metric.get("sensor", ""))] = s.values[0] if s.values else None
    rows = [
        {"id": sid, "value": latest.get((VALUE, sid)), "reconstruction": latest.get((RECON, sid)),
         "error": latest.get((ERROR, sid))}
        for sid in sensors
    ]
    return {"entity": entity, "time": at, "timestamp": stamp, "sensors": rows}


#: stream states of the fleet view; `stale`: the latest frame is older than `stale` (the feed stopped)
FLEET_STATES = ("normal", "anomaly", "stale", "unknown")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def fleet_body(fleet: Fleet, now: float, lookback_s: float, stale_s: float, lasts: list[Series],
               stamps: list[Series], alerts: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Every stream of the fleet at a glance: state, latest score, detector signal against its threshold
    (`margin` = signal / threshold: >= 1 is over), age of the latest frame, open alerts. `alerts`: the open
    (pending or firing) alerts, None when the alert manager could not be asked."""
    latest: dict[tuple[str, str], dict[str, float | None]] = {}
    for s in lasts:
        if s.values and s.values[0] is not None:
            latest.setdefault(s.stream, {})[s.name] = s.values[0]
    when = {s.stream: s.values[0] for s in stamps if s.values and s.values[0] is not None}
    open_by: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for a in alerts or []:
        open_by.setdefault((a["satellite_id"], a["entity"]), []).append(a)
    counts = dict.fromkeys(FLEET_STATES, 0)
    sats = []
    in_fleet = 0
    for sat in fleet.satellites:
        rows = []
        for entity in sat.entities:
            key = (sat.id, entity)
            got, ts = latest.get(key, {}), when.get(key)
            signal, threshold = got.get(SIGNAL), got.get(THRESHOLD)
            age = None if ts is None else max(0.0, now - ts)
            if ts is None or SCORE not in got:
                state = "unknown"
            elif age is not None and age > stale_s:
                state = "stale"
            else:
                state = "anomaly" if got.get(DETECTED) else "normal"
            counts[state] += 1
            mine = open_by.get(key, [])
            in_fleet += len(mine)
            rows.append({
                "entity": entity, "state": state, "anomaly_score": got.get(SCORE), "detector_signal": signal,
                "threshold": threshold,
                "margin": None if signal is None or not threshold else signal / threshold,
                "timestamp": ts, "age_s": age,
                "alerts": None if alerts is None else {
                    "open": len(mine), "shelved": sum(bool(a.get("shelved")) for a in mine),
                    "severity": max((a["severity"] for a in mine), key=SEVERITY_RANK.__getitem__, default=None),
                    "ids": sorted(a["id"] for a in mine)},
            })
        sats.append({"id": sat.id, "name": sat.name, "streams": rows})
    return {
        "time": now, "lookback_s": lookback_s, "stale_s": stale_s,
        "summary": {"streams": sum(counts.values()), **counts,
                    "open_alerts": None if alerts is None else in_fleet},  # of the fleet's streams
        "satellites": sats,
    }


#: The system panel's columns: name -> (PromQL over the scraped /metrics, by job). Counters are per second
#: over the last minute, or increases over the last hour.
SYSTEM_QUERIES: dict[str, str] = {
    "up": "min by (job) (up)",
    "per_s": 'sum by (job) (rate({__name__=~"smap_simulator_frames_sent_total|smap_trigger_messages_total|'
             'smap_worker_frames_total|smap_consumer_messages_total|smap_alert_results_total|'
             'nv_inference_request_success"}[1m]))',
    "lag": 'max by (job) ({__name__=~"smap_trigger_lag|smap_consumer_lag"})',
    "retries_1h": 'sum by (job) (increase({__name__=~"smap_worker_retries_total|'
                  'smap_trigger_publish_retries_total|smap_consumer_import_failures_total"}[1h]))',
    "dead_letters": 'sum by (job) ({__name__=~"smap_trigger_dead_letters_total|'
                    'smap_consumer_dead_letters_total"})',
    "blocked": "max by (job) (smap_worker_blocked)",
}


def system_body(answers: Mapping[str, list[Series]]) -> dict[str, Any]:
    """One row per scraped job with the SYSTEM_QUERIES columns (None where a job has no such series).

    >>> s = Series({"job": "triton"}, [0.0], [1.0])
    >>> system_body({"up": [s], "lag": []})["services"]
    [{'job': 'triton', 'up': 1.0, 'lag': None}]
    """
    rows: dict[str, dict[str, Any]] = {}
    for column in answers:
        for series in answers[column]:
            job = series.metric.get("job", "")
            rows.setdefault(job, {"job": job, **dict.fromkeys(answers)})
            rows[job][column] = series.values[0] if series.values else None
    return {"services": [rows[j] for j in sorted(rows)]}


# ---------------------------------------------------------------- handlers


CATALOG: web.AppKey[Catalog] = web.AppKey("catalog", Catalog)
VICTORIA: web.AppKey[VictoriaClient] = web.AppKey("victoria", VictoriaClient)
ALERTS_URL: web.AppKey[str] = web.AppKey("alerts_url", str)
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


@dataclass(frozen=True)
class Intake:
    """What the HTTP ingest needs beyond the catalog: the plausibility gate and the writer."""

    ranges: Mapping[str, SaneRange] | None
    writer: TelemetryWriter


INTAKE: web.AppKey[Intake] = web.AppKey("intake", Intake)


async def satellites(request: web.Request) -> web.Response:
    """The fleet, with every entity's current state (unknown while VictoriaMetrics is unreachable)."""
    catalog = request.app[CATALOG]
    lookback = parse_lookback(request.query)
    now = time.time()
    window = max(1, round(lookback * 1000))
    status: dict[tuple[str, str], dict[str, Any]] = {
        stream: {"state": "unknown", "anomaly_score": None, "timestamp": None}
        for stream in catalog.fleet.streams()
    }
    victoria = "ok"
    try:
        vm = request.app[VICTORIA]
        last, stamps = await asyncio.gather(
            vm.query(rollup("last_over_time", [SCORE, DETECTED], {}, window), now),
            vm.query(rollup("tlast_over_time", [SCORE], {}, window), now),
        )
    except VictoriaUnavailableError as exc:
        log.warning("satellite status unavailable: %s", exc)
        victoria = "unavailable"
        last, stamps = [], []
    for s in last:
        stream = s.stream
        if stream in status and s.values and s.values[0] is not None:
            if s.name == SCORE:
                status[stream]["anomaly_score"] = s.values[0]
            elif s.name == DETECTED:
                status[stream]["state"] = "anomaly" if s.values[0] else "normal"
    for s in stamps:
        stream = s.stream
        if stream in status and s.values:
            status[stream]["timestamp"] = s.values[0]
    body = [
        {"id": sat.id, "name": sat.name, "entities": list(sat.entities),
         "status": {e: status[(sat.id, e)] for e in sat.entities}}
        for sat in catalog.fleet.satellites
    ]
    return web.json_response(body, headers={"X-Victoria-Status": victoria})


def _credentials(request: web.Request) -> dict[str, str]:
    """The caller's credentials, for a call to the alert manager, which authenticates the caller itself."""
    return {h: request.headers[h] for h in FORWARDED_CREDENTIALS if h in request.headers}


async def _alerts(request: web.Request, params: Mapping[str, str]) -> list[Mapping[str, Any]] | None:
    """Alerts from the alert manager as the caller sees them (their credentials); None when unavailable."""
    url = request.app[ALERTS_URL].rstrip("/") + "/api/smap/alerts"
    headers = _credentials(request)
    try:
        async with request.app[HTTP].get(url, params={**params, "limit": str(MAX_FLEET_ALERTS)},
                                         headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                log.warning("alerts: HTTP %d from %s", resp.status, url)
                return None
            body = await resp.json()
            return list(body["alerts"])
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
        log.warning("alerts unavailable: %r", exc)
        return None


async def fleet(request: web.Request) -> web.Response:
    """GET /api/smap/fleet?lookback=10m&stale=60s: every stream at a glance (fleet_body)."""
    catalog = request.app[CATALOG]
    lookback = parse_lookback(request.query)
    stale = parse_duration(request.query["stale"], "stale") if "stale" in request.query else DEFAULT_STALE_S
    now = time.time()
    window = max(1, round(lookback * 1000))
    vm = request.app[VICTORIA]
    victoria = "ok"
    alerts_task = asyncio.ensure_future(_alerts(request, {"open": "true"}))
    try:
        lasts, stamps = await asyncio.gather(
            vm.query(rollup("last_over_time", [SCORE, DETECTED, SIGNAL, THRESHOLD], {}, window), now),
            vm.query(rollup("tlast_over_time", [SCORE], {}, window), now))
    except VictoriaUnavailableError as exc:
        log.warning("fleet status unavailable: %s", exc)
        victoria, lasts, stamps = "unavailable", [], []
    alerts = await alerts_task
    body = fleet_body(catalog.fleet, now, lookback, stale, lasts, stamps, alerts)
    body["sources"] = {"victoria": victoria, "alerts": "ok" if alerts is not None else "unavailable"}
    return web.json_response(body)


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (before reading it when Content-Length says so)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


async def ingest_telemetry(request: web.Request) -> web.Response:
    """POST /api/smap/telemetry (ingest role): a batch of frames into the telemetry topic (ingest.py)."""
    catalog, intake = request.app[CATALOG], request.app[INTAKE]
    body = await _read_capped(request, MAX_INGEST_BYTES)
    try:
        checks = await asyncio.to_thread(check_batch, body, catalog.fleet, catalog.widths, intake.ranges)
    except BatchError as exc:
        return json_error(400, str(exc))
    try:
        await intake.writer.write(checks)
    except BrokerUnavailableError as exc:
        response = json_error(503, str(exc), retry=True)
        response.headers["Retry-After"] = "5"
        return response
    rejected = sum(c.problem is not None for c in checks)
    return web.json_response({"accepted": len(checks) - rejected, "rejected": rejected,
                              "frames": [c.answer() for c in checks]}, status=422 if rejected else 200)


async def performance(request: web.Request) -> web.Response:
    """GET /api/smap/performance?window=24h (or start, end): detection quality of what the chain stored,
    per entity, satellite and stream (performance.py), with the operators' verdicts on alerts started in
    the range."""
    catalog = request.app[CATALOG]
    tr = parse_range(request.query, time.time())
    vm = request.app[VICTORIA]
    alerts_task = asyncio.ensure_future(_alerts(request, {}))
    try:
        got = await asyncio.gather(*(vm.export(f'{{__name__="{name}"}}', tr.start, tr.end, MAX_PERFORMANCE_SAMPLES)
                                     for name in (DETECTED, GROUND_TRUTH)))
    except SampleLimitError as exc:
        alerts_task.cancel()
        raise ParamError(str(exc)) from None
    samples = [{s.stream: list(zip(s.timestamps, s.values, strict=True)) for s in series} for series in got]
    alerts = await alerts_task
    in_range = None if alerts is None else [
        a for a in alerts if tr.start <= parse_time(str(a["started_at"]), "started_at") <= tr.end]
    body = performance_body(catalog.fleet.streams(), samples[0], samples[1], in_range)
    return web.json_response({**_range_fields(tr), **body})


async def system(request: web.Request) -> web.Response:
    """GET /api/smap/system: per service up, throughput, lag, retries, dead letters (system_body)."""
    vm, now = request.app[VICTORIA], time.time()
    answers = await asyncio.gather(*(vm.query(q, now) for q in SYSTEM_QUERIES.values()))
    return web.json_response({"time": now, **system_body(dict(zip(SYSTEM_QUERIES, answers, strict=True)))})


async def entity_overview(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    entity = request.match_info["entity"]
    sat = catalog.satellite_of(entity, request.query.get("satellite_id"))
    tr = parse_range(request.query, time.time())
    labels = {"satellite_id": sat, "entity": entity}
    vm = request.app[VICTORIA]
    peaks, lasts = await asyncio.gather(
        vm.query_range(rollup("max_over_time", [SCORE, DETECTED, SIGNAL, GROUND_TRUTH, CAUSE], labels, tr.step_ms),
                       tr),
        vm.query_range(rollup("last_over_time", [THRESHOLD], labels, tr.step_ms), tr),
    )
    return web.json_response(overview_body(sat, entity, tr, peaks + lasts))


async def sensor_history(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    entity, sensor = request.match_info["entity"], request.match_info["sensor"]
    sat = catalog.satellite_of(entity, request.query.get("satellite_id"))
    catalog.check_sensor(entity, sensor)
    tr = parse_range(request.query, time.time())
    labels = {"satellite_id": sat, "entity": entity, "sensor": sensor}
    vm = request.app[VICTORIA]
    peaks, lasts = await asyncio.gather(
        vm.query_range(rollup("max_over_time", [ERROR, SENSOR_GT], labels, tr.step_ms), tr),
        vm.query_range(rollup("last_over_time", [VALUE, RECON], labels, tr.step_ms), tr),
    )
    return web.json_response(sensor_body(sat, entity, sensor, tr, peaks + lasts))


async def sensor_snapshot(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    entity = request.match_info["entity"]
    sat = catalog.satellite_of(entity, request.query.get("satellite_id"))
    at = parse_time(request.query["time"], "time") if "time" in request.query else time.time()
    window = max(1, round(parse_lookback(request.query) * 1000))
    labels = {"satellite_id": sat, "entity": entity}
    vm = request.app[VICTORIA]
    values, stamp = await asyncio.gather(
        vm.query(rollup("last_over_time", [VALUE, RECON, ERROR], labels, window), at),
        vm.query(rollup("tlast_over_time", [SCORE], labels, window), at),
    )
    return web.json_response(snapshot_body(entity, catalog.sensors(entity), at, values + stamp))


# ---------------------------------------------------------------- alert manager proxy


async def _proxy(request: web.Request, method: str, path: str) -> web.Response:
    url = URL(request.app[ALERTS_URL].rstrip("/") + path, encoded=True)  # path: as the client encoded it
    body = await request.read() if method == "POST" else None
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")} if body else {}
    # The alert manager authenticates the caller itself (same users): pass their credentials on unchanged.
    headers.update(_credentials(request))
    try:
        async with request.app[HTTP].request(method, url, params=request.query, data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=5)) as resp:
            payload = await resp.read()
            ctype = resp.headers.get("Content-Type", "application/json")
            return web.Response(status=resp.status, body=payload, headers={"Content-Type": ctype})
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("alert manager unreachable at %s: %r", url, exc)
        return json_error(503, "alert manager unavailable")


async def forward(request: web.Request) -> web.Response:
    """An alert API route, forwarded unchanged (the alert manager validates and authorises it again); a
    malformed id is answered here, alert manager or not."""
    for name, value in request.match_info.items():
        if name.endswith("_id") and not value.isdigit():
            return json_error(400, f"{name.replace('_', ' ')} must be an integer")
    return await _proxy(request, request.method, request.rel_url.raw_path)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/smap/satellites", satellites)
    app.router.add_get("/api/smap/fleet", fleet)
    app.router.add_get("/api/smap/system", system)
    app.router.add_get("/api/smap/performance", performance)
    app.router.add_post("/api/smap/telemetry", ingest_telemetry)
    app.router.add_get("/api/smap/entity/{entity}/overview", entity_overview)
    app.router.add_get("/api/smap/entity/{entity}/sensors", sensor_snapshot)
    app.router.add_get("/api/smap/entity/{entity}/sensor/{sensor}", sensor_history)
    for method, path, _ in ALERT_ROUTES:
        app.router.add_route(method, path, forward)
