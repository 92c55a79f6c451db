"""The alert history over HTTP (aiohttp), served by smap-alert-manager and proxied unchanged by the
operation server:

    GET  /api/smap/alerts?state=&severity=&satellite_id=&entity=&rule=&acknowledged=&shelved=&open=&limit=
    GET  /api/smap/alerts/{id}          the alert with its transitions, deliveries and acknowledgements
    POST /api/smap/alerts/{id}/ack      {"note": "..."} -> the alert (operator; the acknowledger is the caller)
    POST /api/smap/alerts/{id}/verdict  {"verdict": "true_anomaly|false_alarm|rare_nominal_event", "comment"}
    GET  /api/smap/verdicts/labeled_anomalies.csv?satellite_id=   true anomalies as telemanom labels
    POST /api/smap/alerts/{id}/shelve   {"duration_s": 3600 | null, "reason"} -> 201 the shelf (operator)
    POST /api/smap/shelves              {"scope": "alert|stream|rule", "target", "duration_s", "reason"} -> 201
    GET  /api/smap/shelves?active=&scope=&target=&limit=   shelves, newest first
    POST /api/smap/shelves/{id}/unshelve {"reason"} -> the ended shelf (operator; 409 when it already ended)
    GET  /healthz                       (public)

Every route but /healthz is guarded by smap_shared.auth.web's middleware: the caller's token or session,
checked against the same PostgreSQL. The acting user is the authenticated caller, never a body field.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import psycopg
from aiohttp import web

from smap_shared.alerting.shelving import SCOPES, ShelfEndedError, parse_shelve, parse_unshelve
from smap_shared.alerting.store import (
    LABEL_COLUMNS,
    SEVERITIES,
    STATES,
    VERDICTS,
    AlertStore,
    event_of_alert,
)
from smap_shared.auth.web import AuthPolicy, RoutePermission, auth_middleware, principal
from smap_shared.http import json_error
from smap_shared.schemas import MAX_BODY_BYTES, AlertEvent, utc_now

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STORE: web.AppKey[AlertStore] = web.AppKey("store", AlertStore)
PUBLISH: web.AppKey[Callable[[list[AlertEvent]], Awaitable[None]]] = web.AppKey("publish")
RULES: web.AppKey[frozenset[str]] = web.AppKey("rules", frozenset)


def parse_filters(query: Any) -> tuple[dict[str, Any], int]:
    """The list endpoint's filters and limit; ValueError names the bad parameter."""
    filters: dict[str, Any] = {}
    for key in ("state", "severity", "satellite_id", "entity", "rule"):
        value = query.get(key)
        if value:
            filters[key] = value
    if filters.get("state") and filters["state"] not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    if filters.get("severity") and filters["severity"] not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
    for flag in ("acknowledged", "shelved", "open"):
        value = parse_flag(query, flag)
        if value is not None:
            filters[flag] = value
    return filters, parse_limit(query)


def parse_flag(query: Any, name: str) -> bool | None:
    raw = query.get(name)
    if not raw:
        return None
    if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{name} must be true or false")
    return bool(raw.lower() in ("true", "1"))


def parse_limit(query: Any) -> int:
    raw_limit = query.get("limit") or str(DEFAULT_LIMIT)
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ValueError("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _path_id(request: web.Request, name: str) -> int | None:
    """The positive integer in path part `name`, or None."""
    try:
        value = int(request.match_info[name])
    except ValueError:
        return None
    return value if value > 0 else None


def _alert_id(request: web.Request) -> int | None:
    return _path_id(request, "alert_id")


async def _json_body(request: web.Request, example: str) -> Any:
    """The request's JSON body ({} when empty); ValueError naming `example` when it is not JSON."""
    raw = await request.read()
    try:
        return json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"body must be JSON: {example}") from None


async def _publish(request: web.Request, alert_id: int, event: str, message: str) -> None:
    """The alert's AlertEvent for a change made through the API (shelving), to the live views."""
    alert = await request.app[STORE].get_alert(alert_id)
    if alert is not None:
        await request.app[PUBLISH]([event_of_alert(alert, event, message, at=utc_now())])


async def list_alerts(request: web.Request) -> web.Response:
    try:
        filters, limit = parse_filters(request.query)
    except ValueError as exc:
        return json_error(400, str(exc))
    alerts = await request.app[STORE].list_alerts(filters, limit)
    return web.json_response({"alerts": alerts})


async def get_alert(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    if alert_id is None:
        return json_error(400, "alert id must be a positive integer")
    alert = await request.app[STORE].get_alert(alert_id)
    if alert is None:
        return json_error(404, f"no alert {alert_id}")
    return web.json_response(alert)


def parse_ack(body: Any) -> str:
    """The note of an acknowledgement body; ValueError says what is wrong. Who acknowledges is the
    authenticated caller: a body that names someone ("by") is refused rather than silently overridden."""
    if not isinstance(body, dict):
        raise ValueError('body must be a JSON object: {"note": "..."}')
    if "by" in body:
        raise ValueError('"by" is not accepted: the acknowledger is the logged-in user or the API token\'s owner')
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 2000:
        raise ValueError('"note" must be a string of at most 2000 characters')
    return note


async def acknowledge(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    if alert_id is None:
        return json_error(400, "alert id must be a positive integer")
    try:
        note = parse_ack(await _json_body(request, '{"note": "..."}'))
    except ValueError as exc:
        return json_error(400, str(exc))
    who = principal(request)
    alert = await request.app[STORE].acknowledge(alert_id, who, note)
    if alert is None:
        return json_error(404, f"no alert {alert_id}")
    await request.app[PUBLISH]([event_of_alert(alert, "acknowledged", f"acknowledged by {who.username}")])
    return web.json_response(alert)


def parse_verdict(body: Any) -> tuple[str, str]:
    """(verdict, comment) of a verdict body; ValueError says what is wrong."""
    if not isinstance(body, dict) or body.get("verdict") not in VERDICTS:
        raise ValueError(f'body must be {{"verdict": one of {", ".join(VERDICTS)}, "comment": "..."}}')
    if "by" in body:
        raise ValueError('"by" is not accepted: the verdict is the logged-in user\'s or the API token owner\'s')
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 2000:
        raise ValueError('"comment" must be a string of at most 2000 characters')
    return body["verdict"], comment


async def verdict(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    if alert_id is None:
        return json_error(400, "alert id must be a positive integer")
    try:
        value, comment = parse_verdict(await _json_body(request, '{"verdict": "...", "comment": "..."}'))
    except ValueError as exc:
        return json_error(400, str(exc))
    alert = await request.app[STORE].record_verdict(alert_id, principal(request), value, comment)
    if alert is None:
        return json_error(404, f"no alert {alert_id}")
    return web.json_response(alert)


async def _shelve(request: web.Request, body: Any, alert_id: int | None) -> web.Response:
    try:
        req = (parse_shelve(body) if alert_id is None else parse_shelve(body, scope="alert", target=str(alert_id)))
    except ValueError as exc:
        return json_error(400, str(exc))
    rules = request.app[RULES]
    if req.scope == "rule" and rules and req.target not in rules:
        return json_error(400, f"no rule {req.target!r}; rules: {', '.join(sorted(rules))}")
    store = request.app[STORE]
    shelf = await store.shelve(req, principal(request))
    if shelf is None:
        return json_error(404, f"no alert {req.target}")
    if req.scope == "alert":
        await _publish(request, int(req.target), "shelved", f"shelved by {shelf['by']}: {req.reason}")
    return web.json_response(shelf, status=201)


async def shelve_alert(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    if alert_id is None:
        return json_error(400, "alert id must be a positive integer")
    try:
        body = await _json_body(request, '{"duration_s": 3600, "reason": "..."}')
    except ValueError as exc:
        return json_error(400, str(exc))
    return await _shelve(request, body, alert_id)


async def create_shelf(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request, '{"scope": "stream", "target": "SAT-001/A-1", "duration_s": 3600, '
                                         '"reason": "..."}')
    except ValueError as exc:
        return json_error(400, str(exc))
    return await _shelve(request, body, None)


async def list_shelves(request: web.Request) -> web.Response:
    try:
        active = parse_flag(request.query, "active")
        scope = request.query.get("scope") or None
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        limit = parse_limit(request.query)
    except ValueError as exc:
        return json_error(400, str(exc))
    shelves = await request.app[STORE].list_shelves(active=active, scope=scope,
                                                    target=request.query.get("target") or None, limit=limit)
    return web.json_response({"shelves": shelves})


async def unshelve(request: web.Request) -> web.Response:
    shelf_id = _path_id(request, "shelf_id")
    if shelf_id is None:
        return json_error(400, "shelf id must be a positive integer")
    try:
        reason = parse_unshelve(await _json_body(request, '{"reason": "..."}'))
    except ValueError as exc:
        return json_error(400, str(exc))
    store = request.app[STORE]
    try:
        shelf = await store.unshelve(shelf_id, principal(request), reason)
    except ShelfEndedError as exc:
        return json_error(409, str(exc))
    if shelf is None:
        return json_error(404, f"no shelf {shelf_id}")
    if shelf["scope"] == "alert":
        await _publish(request, int(shelf["target"]), "unshelved", f"unshelved by {shelf['ended_by']}")
    return web.json_response(shelf)


async def verdict_labels(request: web.Request) -> web.Response:
    rows = await request.app[STORE].verdict_labels(request.query.get("satellite_id") or None)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="labeled_anomalies.csv"'})


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].list_alerts({}, 1)
    except (psycopg.Error, OSError) as exc:
        return web.json_response({"status": "degraded", "database": str(exc)[:200]}, status=503)
    return web.json_response({"status": "ok"})


@web.middleware
async def _db_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # e.g. 413 for a body over MAX_BODY_BYTES: JSON like every other error
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return json_error(exc.status, exc.reason)
    except (psycopg.OperationalError, OSError) as exc:
        log.warning("%s %s: database unavailable: %r", request.method, request.path, exc)
        return json_error(503, "alert database unavailable")


#: What the alert API's routes need beyond the defaults (read for GET, admin for any other write).
PERMISSIONS: dict[tuple[str, str], RoutePermission] = {
    ("POST", "/api/smap/alerts/{alert_id}/ack"): "operate",
    ("POST", "/api/smap/alerts/{alert_id}/verdict"): "operate",
    ("POST", "/api/smap/alerts/{alert_id}/shelve"): "operate",
    ("POST", "/api/smap/shelves"): "operate",
    ("POST", "/api/smap/shelves/{shelf_id}/unshelve"): "operate",
}

Handler = Callable[[web.Request], Awaitable[web.Response]]
#: The alert API, declared once: the alert manager serves these and the operation server forwards them
#: unchanged under the dashboard's origin (operations/api.py).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/smap/alerts", list_alerts),
    ("GET", "/api/smap/alerts/{alert_id}", get_alert),
    ("POST", "/api/smap/alerts/{alert_id}/ack", acknowledge),
    ("POST", "/api/smap/alerts/{alert_id}/verdict", verdict),
    ("POST", "/api/smap/alerts/{alert_id}/shelve", shelve_alert),
    ("GET", "/api/smap/verdicts/labeled_anomalies.csv", verdict_labels),
    ("GET", "/api/smap/shelves", list_shelves),
    ("POST", "/api/smap/shelves", create_shelf),
    ("POST", "/api/smap/shelves/{shelf_id}/unshelve", unshelve),
)


def make_app(store: AlertStore, publish: Callable[[list[AlertEvent]], Awaitable[None]],
             auth: AuthPolicy, rules: Collection[str] = ()) -> web.Application:
    """`rules`: the names a rule shelf may target (empty: not checked)."""
    auth.public = auth.public | {"/healthz"}
    auth.permissions = {**PERMISSIONS, **auth.permissions}
    app = web.Application(middlewares=[_db_errors, auth_middleware(auth)], client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[PUBLISH] = publish
    app[RULES] = frozenset(rules)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/healthz", healthz)
    return app
