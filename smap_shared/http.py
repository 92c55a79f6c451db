"""The one shape of an HTTP error of every service's API: `{"error": "<what is wrong>", "status": <code>}`
(plus fields a route adds), with the status as the HTTP status; a 401 names the Bearer scheme. And the one
way their JSON writes a time (`iso`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """
    >>> r = json_error(401, "log in"); (r.status, r.text, r.headers["WWW-Authenticate"])
    (401, '{"error": "log in", "status": 401}', 'Bearer realm="smap"')
    """
    headers = {"WWW-Authenticate": 'Bearer realm="smap"'} if status == 401 else None
    return web.json_response({"error": message, "status": status, **extra}, status=status, headers=headers)


def iso(ts: datetime | None) -> str | None:
    """A stored time as the APIs write it: RFC 3339 with "Z" for UTC.

    >>> from datetime import UTC
    >>> iso(datetime(2026, 12, 3, 9, 0, tzinfo=UTC)), iso(None)
    ('2026-12-03T09:00:00Z', None)
    """
    return None if ts is None else ts.isoformat().replace("+00:00", "Z")
