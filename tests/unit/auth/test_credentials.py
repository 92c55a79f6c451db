"""The pure parts of smap_shared.auth (roles, hashes, token formats, the loopback rule) and the middleware's
decision (`identify`) against an in-memory user store: the same code the real services run."""

from __future__ import annotations

import asyncio
import doctest
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from smap_shared.auth import credentials
from smap_shared.auth.credentials import Principal, hash_secret, parse_token, verify_secret
from smap_shared.auth.web import AuthConfigError, AuthPolicy, RefusedError, check_mode, identify


def test_doctests() -> None:
    assert doctest.testmod(credentials).failed == 0


def test_hashes_are_salted_and_malformed_ones_never_verify() -> None:
    a, b = hash_secret("same secret here"), hash_secret("same secret here")
    assert a != b and verify_secret("same secret here", a) and verify_secret("same secret here", b)
    for bad in ("", "plain", "md5$1$2$3$4$5", a.replace("scrypt", "bcrypt"), a[:-4]):
        assert not verify_secret("same secret here", bad)


def test_tokens_have_one_format() -> None:
    assert parse_token("smap_7_" + "A" * 42) is None and parse_token("smap_x_" + "A" * 43) is None
    assert parse_token("smap_7_" + "A" * 43) == (7, "A" * 43)


def test_auth_off_only_on_loopback() -> None:
    check_mode("off", "127.0.0.1")
    check_mode("on", "0.0.0.0")
    with pytest.raises(AuthConfigError, match="loopback"):
        check_mode("off", "0.0.0.0")


class _Store:
    """Sessions and tokens in memory, answering like AuthStore."""

    def __init__(self) -> None:
        self.sessions = {"s-otto": Principal("otto", "operator", "session", 2, "csrf-otto")}
        self.tokens = {"t-vera": Principal("vera", "viewer", "token", 3)}

    async def session(self, sid: str) -> Principal | None:
        return self.sessions.get(sid)

    async def token(self, token: str) -> Principal | None:
        return self.tokens.get(token)


def _policy() -> AuthPolicy:
    store: Any = _Store()
    return AuthPolicy("on", store, public=frozenset({"/healthz"}), public_prefixes=("/static/",),
                      permissions={("POST", "/ack"): "operate"})


async def _noop(request: web.Request) -> web.Response:
    return web.Response()


def _app() -> web.Application:
    app = web.Application()
    for path in ("/healthz", "/static/app.js", "/api/x", "/ws"):
        app.router.add_get(path, _noop)
    for path in ("/api/x", "/ack"):
        app.router.add_post(path, _noop)
    return app


async def _decide(method: str, path: str, headers: dict[str, str]) -> Principal | int | None:
    probe = make_mocked_request(method, path)
    match = await _app().router.resolve(probe)
    request = make_mocked_request(method, path, headers={"Host": "ops.example:8000", **headers})
    request._match_info = match  # as the router resolves it for the middleware
    try:
        return await identify(_policy(), request)
    except RefusedError as refused:
        return refused.status


def test_identify_decides_who_and_whether() -> None:
    asyncio.run(_identify_cases())


async def _identify_cases() -> None:
    cookie = {"Cookie": "smap_session=s-otto"}
    assert await _decide("GET", "/healthz", {}) is None
    assert await _decide("GET", "/static/app.js", {}) is None
    assert await _decide("GET", "/api/x", {}) == 401
    assert await _decide("GET", "/api/x", {"Authorization": "Basic abc"}) == 401
    vera = await _decide("GET", "/api/x", {"Authorization": "Bearer t-vera"})
    assert isinstance(vera, Principal) and vera.username == "vera"
    assert await _decide("POST", "/api/x", {"Authorization": "Bearer t-vera"}) == 403  # unnamed write: admin
    assert await _decide("POST", "/ack", {"Authorization": "Bearer t-vera"}) == 403  # viewer may not operate
    assert await _decide("POST", "/ack", cookie) == 403  # no CSRF token
    assert await _decide("POST", "/ack", {**cookie, "X-CSRF-Token": "csrf-otto",
                                          "Origin": "http://evil.example"}) == 403
    otto = await _decide("POST", "/ack", {**cookie, "X-CSRF-Token": "csrf-otto", "Origin": "https://ops.example:8000"})
    assert isinstance(otto, Principal) and otto.username == "otto"
    assert await _decide("GET", "/ws", {**cookie, "Upgrade": "websocket", "Origin": "http://evil.example"}) == 403
    off = await identify(AuthPolicy("off"), make_mocked_request("POST", "/ack"))
    assert off is not None and off.username == "local-dev" and off.method == "off"
