"""Authentication and authorisation for the aiohttp APIs (the operation server and the alert manager): one
middleware decides, before any handler runs, who is calling and whether they may.

- Who: `Authorization: Bearer smap_<id>_<secret>` (an API token: scripts, a ground segment's feed) or the
  page's session cookie `smap_session` (HttpOnly, SameSite=Strict). A request with neither answers 401.
- May they: safe methods need `read`, unless the policy names another permission; writes need the
  permission the policy names for their route, `admin` when it names none. Not allowed: 403.
- CSRF: a write authenticated by the cookie must echo the session's CSRF token in `X-CSRF-Token` and, when
  the browser sends an Origin, come from this origin; a WebSocket opened with the cookie must come from this
  origin too. Token-authenticated requests carry no ambient credential, so they need neither.
- SMAP_AUTH=off (local development on loopback only): everyone is `local-dev` with every right.
The acting user of every write is `principal(request)`: never a field of the request body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import psycopg
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from psycopg_pool import AsyncConnectionPool

from smap_shared.auth.credentials import (
    DEV_PRINCIPAL,
    LoginThrottle,
    Permission,
    Principal,
    check_password,
    is_loopback,
)
from smap_shared.auth.store import AuthError, AuthStore
from smap_shared.http import json_error
from smap_shared.streaming.retry import retry_until_done

log = logging.getLogger(__name__)

SESSION_COOKIE = "smap_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Headers the operation server forwards to the alert manager, which authenticates the caller itself.
FORWARDED_CREDENTIALS = (hdrs.AUTHORIZATION, hdrs.COOKIE, CSRF_HEADER)
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("smap_principal", Principal)
Mode = Literal["on", "off"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: "any": any authenticated caller, whatever the role (e.g. logging out).
RoutePermission = Permission | Literal["any"]


class AuthConfigError(ValueError):
    """SMAP_AUTH=off asked for on an address beyond loopback."""


def check_mode(mode: Mode, host: str) -> None:
    """Refuse auth-off anywhere but loopback: it is for local development only."""
    if mode == "off" and not is_loopback(host):
        raise AuthConfigError(
            f"SMAP_AUTH=off on {host}: authentication may only be off for local development on loopback; "
            "bind to 127.0.0.1 (SMAP_BIND_ADDRESS) or turn SMAP_AUTH on and create users "
            "(python -m smap_shared.auth create-user NAME --role admin)")


def principal(request: web.Request) -> Principal:
    """Who is making this request (set by the middleware; the handler runs only when there is one)."""
    who = request.get(PRINCIPAL_KEY)
    if not isinstance(who, Principal):
        raise RuntimeError("principal() called on a route the auth middleware does not guard")
    return who


def same_origin(request: web.Request) -> bool:
    """True when the request has no Origin (not a cross-site browser request) or its Origin's host is the host
    this request was addressed to (Host, or X-Forwarded-Host behind a reverse proxy)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc
    hosts = {request.host, request.headers.get("X-Forwarded-Host", "")}
    return bool(netloc) and netloc in hosts


@dataclass
class AuthPolicy:
    """What a service protects and how. `store` is None until the database is ready (503 meanwhile)."""

    mode: Mode
    store: AuthStore | None = None
    #: Routes (canonical paths, e.g. "/healthz") anyone may call, and path prefixes anyone may GET.
    public: frozenset[str] = frozenset()
    public_prefixes: tuple[str, ...] = ()
    #: (method, canonical route) -> the permission it needs, where it is not `read` (safe) or `admin` (write).
    permissions: Mapping[tuple[str, str], RoutePermission] = field(default_factory=dict)
    cookie_secure: bool = False
    session_hours: float = 12.0
    #: failed logins per user and address (credentials.THROTTLE_LIMITS)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    def needed(self, method: str, route: str) -> RoutePermission:
        default: RoutePermission = "read" if method in SAFE_METHODS else "admin"
        return self.permissions.get((method, route), default)

    async def authenticate(self, request: web.Request) -> Principal | None:
        assert self.store is not None
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return await self.store.token(token.strip())
        sid = request.cookies.get(SESSION_COOKIE)
        return None if not sid else await self.store.session(sid)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


class RefusedError(Exception):
    """A request the policy turns away: the status and what the caller should know."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def identify(policy: AuthPolicy, request: web.Request) -> Principal | None:
    """The caller of a guarded route (None: a public route, no one needed); RefusedError says why not."""
    if policy.mode == "off":
        return DEV_PRINCIPAL
    route = _route(request)
    safe = request.method in SAFE_METHODS
    if route in policy.public or (safe and request.path.startswith(policy.public_prefixes)):
        if not safe and not same_origin(request):
            raise RefusedError(403, "cross-origin request refused")
        return None
    if policy.store is None:
        raise RefusedError(503, "authentication database unavailable; retry shortly")
    try:
        who = await policy.authenticate(request)
    except (psycopg.OperationalError, OSError) as exc:
        log.warning("%s %s: authentication database unavailable: %r", request.method, request.path, exc)
        raise RefusedError(503, "authentication database unavailable; retry shortly") from None
    if who is None:
        raise RefusedError(401, "authentication required: log in, or send Authorization: Bearer <API token>")
    needed = policy.needed(request.method, route)
    if needed != "any" and not who.may(needed):
        raise RefusedError(403, f"{who.username} ({who.role}) may not {needed}: {request.method} {request.path}")
    if who.method == "session":
        websocket = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if (not safe or websocket) and not same_origin(request):
            raise RefusedError(403, "cross-origin request refused")
        if not safe and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), who.csrf_token or "-"):
            raise RefusedError(403, f"missing or wrong {CSRF_HEADER} header (CSRF protection): reload the page")
    return who


def auth_middleware(policy: AuthPolicy) -> Middleware:
    @web.middleware
    async def authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            who = await identify(policy, request)
        except RefusedError as refused:
            return json_error(refused.status, str(refused))
        if who is not None:
            request[PRINCIPAL_KEY] = who
        return await handler(request)

    return authorise


# ---------------------------------------------------------------- the login API (served by the operation server)

POLICY: web.AppKey[AuthPolicy] = web.AppKey("auth_policy", AuthPolicy)
AUTH_ROUTES: dict[tuple[str, str], RoutePermission] = {
    ("POST", "/api/auth/logout"): "any",
    ("POST", "/api/auth/tokens"): "any",  # your own token; an admin may name any user
    ("GET", "/api/auth/users"): "admin",
    ("POST", "/api/auth/users"): "admin",
    ("GET", "/api/auth/audit"): "admin",
}
AUTH_PUBLIC = frozenset({"/api/auth/login", "/api/auth/me"})


def _me(who: Principal, mode: Mode) -> dict[str, Any]:
    return {"auth": mode, "user": who.username, "role": who.role, "method": who.method,
            "csrf_token": who.csrf_token}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _store(request: web.Request) -> AuthStore:
    store = request.app[POLICY].store
    if store is None:
        raise web.HTTPServiceUnavailable(text='{"error": "authentication database unavailable", "status": 503}',
                                         content_type="application/json")
    return store


async def me(request: web.Request) -> web.Response:
    policy = request.app[POLICY]
    if policy.mode == "off":
        return web.json_response(_me(DEV_PRINCIPAL, "off"))
    if policy.store is None:
        return json_error(503, "authentication database unavailable; retry shortly")
    who = await policy.authenticate(request)
    if who is None:
        return json_error(401, "not logged in", auth="on")
    return web.json_response(_me(who, "on"))


async def login(request: web.Request) -> web.Response:
    policy = request.app[POLICY]
    if policy.mode == "off":
        return web.json_response(_me(DEV_PRINCIPAL, "off"))
    store = _store(request)
    try:
        body = await _body(request)
    except ValueError as exc:
        return json_error(400, str(exc))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or len(password) > 1024:
        return json_error(400, 'body must be {"username": "...", "password": "..."}')
    name, address, now = username.strip().lower()[:64], request.remote or "", time.monotonic()
    wait = policy.throttle.retry_after(name, address, now)
    if wait is not None:  # refused before any password is checked: guessing costs the guesser time
        await store.audit(None, "login_throttled", name, {"address": address}, username=name)
        response = json_error(429, f"too many failed logins: try again in {math.ceil(wait)} s")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    result = await store.login(name, password)
    if result is None:
        policy.throttle.failed(name, address, now)
        await store.audit(None, "login_failed", name, {"address": address}, username=name)
        return json_error(401, "wrong user name or password")
    policy.throttle.succeeded(name, address)
    who, sid = result
    await store.audit(who, "login")
    response = web.json_response(_me(who, "on"))
    response.set_cookie(SESSION_COOKIE, sid, max_age=int(policy.session_hours * 3600), path="/",
                        httponly=True, samesite="Strict", secure=policy.cookie_secure)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.json_response({"logged_out": True})
    policy = request.app[POLICY]
    sid = request.cookies.get(SESSION_COOKIE)
    if policy.mode == "on" and sid:
        store = _store(request)
        await store.logout(sid)
        await store.audit(principal(request), "logout")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def list_users(request: web.Request) -> web.Response:
    return web.json_response({"users": await _store(request).list_users()})


async def create_user(request: web.Request) -> web.Response:
    store, who = _store(request), principal(request)
    try:
        body = await _body(request)
        username, role, password = body.get("username"), body.get("role"), body.get("password")
        if not isinstance(username, str) or not isinstance(role, str):
            raise ValueError('body must be {"username": "...", "role": "viewer|operator|ingest|admin", '
                             '"password": "..." (optional: token-only)}')
        if password is not None:
            if not isinstance(password, str):
                raise ValueError('"password" must be a string')
            check_password(password)
        user_id = await store.create_user(username, role, password, by=who.username)
    except ValueError as exc:  # AuthError included
        return json_error(409 if isinstance(exc, AuthError) and "exists" in str(exc) else 400, str(exc))
    await store.audit(who, "user_created", username, {"role": role})
    return web.json_response({"id": user_id, "username": username, "role": role}, status=201)


async def create_token(request: web.Request) -> web.Response:
    store, who = _store(request), principal(request)
    try:
        body = await _body(request)
        username, name = body.get("username", who.username), body.get("name")
        if not isinstance(username, str) or not isinstance(name, str):
            raise ValueError('body must be {"name": "what the token is for", "username": "..." (admin only)}')
        if username != who.username and not who.may("admin"):
            return json_error(403, f"{who.username} may create tokens only for themselves")
        if who.method == "off":
            raise ValueError("SMAP_AUTH=off: there are no tokens to create")
        token = await store.create_token(username, name)
    except ValueError as exc:
        return json_error(400, str(exc))
    await store.audit(who, "token_created", username, {"name": name})
    return web.json_response({"username": username, "name": name, "token": token}, status=201)


async def audit(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        return json_error(400, "limit must be an integer between 1 and 1000")
    return web.json_response({"audit": await _store(request).audit_log(int(raw))})


def add_auth_routes(app: web.Application) -> None:
    app.router.add_get("/api/auth/me", me)
    app.router.add_post("/api/auth/login", login)
    app.router.add_post("/api/auth/logout", logout)
    app.router.add_get("/api/auth/users", list_users)
    app.router.add_post("/api/auth/users", create_user)
    app.router.add_post("/api/auth/tokens", create_token)
    app.router.add_get("/api/auth/audit", audit)



async def open_store(policy: AuthPolicy, database_url: str, stop: asyncio.Event
                     ) -> AsyncConnectionPool[Any] | None:
    """Create and migrate the database (retrying while PostgreSQL is unreachable: requests answer 503
    meanwhile), then open a small pool and hand the policy its store. None when stopped first."""
    from smap_shared.alerting.store import ensure_database, migrate  # the tables live in its migrations

    async def prepare() -> None:
        await ensure_database(database_url)
        await migrate(database_url)

    if not await retry_until_done(prepare, stop, "preparing the authentication database",
                                  backoff_s=0.5, backoff_max_s=10.0):
        return None
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False,
                                                         timeout=10)
    await pool.open()
    policy.store = AuthStore(pool, policy.session_hours)
    log.info("authentication on (users, tokens and sessions in %s)", database_url.rsplit("@", 1)[-1])
    return pool
