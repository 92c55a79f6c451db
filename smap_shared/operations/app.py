"""The operation server's aiohttp application: API, WebSocket, the dashboard page, JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web
from prometheus_client import Counter, Histogram

from smap_shared import schemas
from smap_shared.alerting.api import PERMISSIONS as ALERT_PERMISSIONS
from smap_shared.auth.web import (
    AUTH_PUBLIC,
    AUTH_ROUTES,
    POLICY,
    AuthPolicy,
    RoutePermission,
    add_auth_routes,
    auth_middleware,
    check_mode,
    open_store,
)
from smap_shared.data import DataSource, default_source
from smap_shared.fleet import load_fleet
from smap_shared.http import json_error
from smap_shared.operations.api import (
    ALERTS_URL,
    CATALOG,
    HTTP,
    INTAKE,
    VICTORIA,
    Catalog,
    Intake,
    NotFoundError,
    add_routes,
)
from smap_shared.operations.ingest import TelemetryWriter
from smap_shared.operations.live import Hub, Subscription, run_feed
from smap_shared.operations.openapi import openapi_document
from smap_shared.operations.params import ParamError
from smap_shared.operations.vm import VictoriaClient, VictoriaQueryError, VictoriaUnavailableError
from smap_shared.settings import OperationServerSettings
from smap_shared.streaming.metrics import LATENCY_BUCKETS
from smap_shared.streaming.validation import entity_widths, sane_ranges

log = logging.getLogger(__name__)

SERVICE = "smap-operation-server"
WEB_SUBDIR = Path("smap-operation-server") / "web"
UPLOT_DIST = Path("node_modules") / "uplot" / "dist"
OPENMCT_DIST = Path("node_modules") / "openmct" / "dist"


def web_dir(settings: OperationServerSettings) -> Path:
    """The page (index.html, app.js, style.css) and, under node_modules, the chart library npm installed:
    the checkout's folder in native mode, /app/smap-operation-server/web in the image."""
    if settings.operation_web_dir is not None:
        return settings.operation_web_dir
    checkout = Path(__file__).resolve().parents[2] / WEB_SUBDIR
    return checkout if checkout.is_dir() else Path.cwd() / WEB_SUBDIR

HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
FEED_READY: web.AppKey[asyncio.Event] = web.AppKey("feed_ready", asyncio.Event)


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram


@cache
def http_metrics() -> HttpMetrics:
    return HttpMetrics(
        requests=Counter("smap_operation_http_requests_total", "HTTP requests", ["route", "status"]),
        latency=Histogram("smap_operation_http_latency_seconds", "HTTP request latency", ["route"],
                          buckets=LATENCY_BUCKETS),
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Expected failures and the status they answer with (the message is the exception's text).
_CLIENT_ERRORS: tuple[tuple[type[Exception], int], ...] = ((ParamError, 400), (NotFoundError, 404))


def _failure(request: web.Request, exc: Exception) -> web.Response:
    for kind, status in _CLIENT_ERRORS:
        if isinstance(exc, kind):
            return json_error(status, str(exc))
    if isinstance(exc, VictoriaUnavailableError):
        log.warning("%s %s: %s", request.method, request.path, exc)
        return json_error(503, "VictoriaMetrics unavailable")
    if isinstance(exc, VictoriaQueryError):
        log.error("%s %s: %s", request.method, request.path, exc)
        return json_error(500, "query rejected by VictoriaMetrics")
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return json_error(500, "internal error")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON body with a fitting status; never a stack trace to the client."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except Exception as exc:
        response = _failure(request, exc)
        status = response.status
        return response
    finally:
        metrics = http_metrics()
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


# ---------------------------------------------------------------- WebSocket


async def live_socket(request: web.Request) -> web.StreamResponse:
    """`/ws/smap?satellite_id=SAT-001&entity=A-1` (both optional). The client may change its subscription
    by sending `{"type": "subscribe", "satellite_id": ..., "entity": ...}`."""
    catalog = request.app[CATALOG]
    subscription = _checked_subscription(catalog, Subscription.from_query(request.query))
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=64 * 1024)
    await ws.prepare(request)
    hub = request.app[HUB]
    client = hub.add(ws, subscription)
    try:
        await ws.send_json({"type": "subscribed", "satellite_id": subscription.satellite_id,
                            "entity": subscription.entity})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                body = json.loads(msg.data)
                if not isinstance(body, dict) or body.get("type") != "subscribe":
                    raise ParamError('expected {"type": "subscribe", "satellite_id": ..., "entity": ...}')
                client.subscription = _checked_subscription(catalog, Subscription.from_query(body))
                await ws.send_json({"type": "subscribed", "satellite_id": client.subscription.satellite_id,
                                    "entity": client.subscription.entity})
            except (ValueError, NotFoundError) as exc:
                await ws.send_json({"type": "error", "error": str(exc)})
    finally:
        await hub.remove(client)
        await ws.close()
    return ws


def _checked_subscription(catalog: Catalog, sub: Subscription) -> Subscription:
    if sub.satellite_id is not None:
        try:
            sat = catalog.fleet.satellite(sub.satellite_id)
        except ValueError as exc:
            raise NotFoundError(str(exc)) from None
        if sub.entity is not None and sub.entity not in sat.entities:
            raise NotFoundError(f"entity {sub.entity!r} is not on {sub.satellite_id}")
    elif sub.entity is not None:
        catalog.satellite_of(sub.entity)
    return sub


# ---------------------------------------------------------------- page, health, spec


WEB_DIR: web.AppKey[Path] = web.AppKey("web_dir", Path)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[WEB_DIR] / "index.html")


async def openmct_index(request: web.Request) -> web.StreamResponse:
    """NASA Open MCT with the SMAP plugin (web/openmct/): the fleet's telemetry and the alerts as faults."""
    if request.path == "/openmct":
        raise web.HTTPFound("/openmct/")
    return web.FileResponse(request.app[WEB_DIR] / "openmct" / "index.html")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    victoria = await request.app[VICTORIA].healthy()
    return web.json_response({
        "status": "ok", "victoria": "ok" if victoria else "unavailable",
        "live_feed": "connected" if request.app[FEED_READY].is_set() else "connecting",
        "ws_clients": len(request.app[HUB].clients),
    })


def make_catalog(settings: OperationServerSettings, source: DataSource | None = None) -> Catalog:
    fleet = load_fleet(settings.fleet_file)
    return Catalog(fleet, entity_widths(fleet, source or default_source(settings.smap_data_dir)))


#: Who may call what (smap_shared.auth.web): the page and its assets are public (it shows the login), reads
#: need `read`, writes the permission named here (`admin` where none is named).
PUBLIC_ROUTES = frozenset({"/", "/openmct", "/openmct/", "/healthz", "/api/openapi.json"}) | AUTH_PUBLIC
PUBLIC_PREFIXES = ("/static/", "/vendor/")
#: The proxied alert routes need what the alert manager itself asks for (it checks again).
PERMISSIONS: dict[tuple[str, str], RoutePermission] = {**AUTH_ROUTES, **ALERT_PERMISSIONS,
                                                       ("POST", "/api/smap/telemetry"): "ingest"}


def make_app(settings: OperationServerSettings, *, catalog: Catalog | None = None,
             live_feed: bool = True) -> web.Application:
    auth = AuthPolicy(settings.smap_auth, public=PUBLIC_ROUTES, public_prefixes=PUBLIC_PREFIXES,
                      permissions=PERMISSIONS, cookie_secure=settings.auth_cookie_secure,
                      session_hours=settings.auth_session_hours)
    app = web.Application(middlewares=[json_errors, auth_middleware(auth)], client_max_size=schemas.MAX_BODY_BYTES)
    app[POLICY] = auth
    add_auth_routes(app)
    source = default_source(settings.smap_data_dir)  # one load of the data for the widths and the ranges
    app[CATALOG] = catalog = catalog or make_catalog(settings, source)
    spans = settings.trigger_plausible_spans
    app[INTAKE] = intake = Intake(
        sane_ranges(catalog.fleet, source, spans) if spans > 0 else None,
        TelemetryWriter(settings.kafka_bootstrap_servers, settings.telemetry_topic, settings.dlq_topic))
    app[ALERTS_URL] = settings.alert_manager_url
    app[HUB] = Hub(queue_max=settings.ws_queue_max)
    app[FEED_READY] = asyncio.Event()
    add_routes(app)
    app.router.add_get("/ws/smap", live_socket)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    page = app[WEB_DIR] = web_dir(settings)
    uplot = page / UPLOT_DIST
    if uplot.is_dir():
        app.router.add_static("/vendor/uplot/", uplot)
    else:
        log.warning("%s missing: run `npm ci` in %s (the page's charts will not load)", uplot, page)
    openmct = page / OPENMCT_DIST
    if openmct.is_dir():
        app.router.add_static("/vendor/openmct/", openmct)
    else:
        log.warning("%s missing: run `npm ci` in %s (/openmct will not load)", openmct, page)
    app.router.add_get("/openmct", openmct_index)
    app.router.add_get("/openmct/", openmct_index)
    app.router.add_static("/static/", page)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        app[HTTP] = session
        app[VICTORIA] = VictoriaClient(settings.victoria_url, session, settings.victoria_timeout_s)
        stop = asyncio.Event()
        feed = (asyncio.create_task(run_feed(settings, app[HUB], stop, app[FEED_READY]))
                if live_feed else None)
        users = (asyncio.create_task(open_store(auth, settings.users_database_url, stop))
                 if settings.smap_auth == "on" else None)
        yield
        stop.set()
        if users is not None:
            with contextlib.suppress(Exception):
                pool = await asyncio.wait_for(users, 15)
                if pool is not None:
                    await pool.close()
        if feed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed, 15)
        await app[HUB].close_all()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(intake.writer.close(), 15)
        await session.close()

    app.cleanup_ctx.append(clients)
    return app


async def run_operation_server(settings: OperationServerSettings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    host = settings.operation_host or settings.smap_bind_address
    check_mode(settings.smap_auth, host)
    app = make_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, settings.operation_port)
    await site.start()
    log.info("%s on http://%s:%d (VictoriaMetrics %s, Kafka %s)", SERVICE, host,
             settings.operation_port, settings.victoria_url, settings.kafka_bootstrap_servers)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
