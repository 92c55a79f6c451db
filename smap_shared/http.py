"""The one shape of an HTTP error of every service's API: `{"error": "<what is wrong>", "status": <code>}`
(plus fields a route adds), with the status as the HTTP status; a 401 names the Bearer scheme."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """
    >>> r = json_error(401, "log in"); (r.status, r.text, r.headers["WWW-Authenticate"])
    (401, '{"error": "log in", "status": 401}', 'Bearer realm="smap"')
    """
    headers = {"WWW-Authenticate": 'Bearer realm="smap"'} if status == 401 else None
    return web.json_response({"error": message, "status": status, **extra}, status=status, headers=headers)
