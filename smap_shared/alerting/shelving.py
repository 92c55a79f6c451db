"""Shelving: an operator silences an alert, a stream or a rule for a while without losing anything.

    shelve   alert #12 | stream SAT-001/A-1 | rule score_high, for duration_s (or until unshelved), with a reason
    unshelve a shelf before it expires, with a reason

Guarantee: a shelf never hides a record. Alerts under an active shelf are recorded exactly as without it; only
their notifications wait in the outbox (status 'held', `held_by` the shelf), written in the same transaction
as the firing (store.apply_batch). When no active shelf covers the alert any more (the shelf expired or was
unshelved) its held notifications are released to the delivery loop ('pending'), or dropped when the alert
resolved meanwhile (nobody needs to hear of an alarm that is over; the resolution is then not notified
either). Release runs in the unshelve transaction and in the alert manager's sweep (`sweep`, every second),
so a notification held by a shelf that expired while its firing was still being written is released by the
next sweep. Expiry is wall-clock time (an operator's "for one hour"), unlike the lifecycle, which uses
frame time. Every shelve, unshelve and expiry is written to audit_log in the transaction that made it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from smap_shared.auth.credentials import Principal
from smap_shared.auth.store import insert_audit
from smap_shared.http import iso

Scope = Literal["alert", "stream", "rule"]
SCOPES: tuple[Scope, ...] = ("alert", "stream", "rule")
MAX_SHELVE_S = 31 * 86400  # the longest shelf with an expiry (like the longest query window)
MAX_REASON_CHARS = 2000
EXPIRY = "expiry"  # ended_by of a shelf that ran out

#: SQL: shelf `s` is active now
ACTIVE = "s.ended_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())"
#: SQL: shelf `s` covers alert `a`
COVERS = ("((s.scope = 'alert' AND s.target = a.id::text) OR (s.scope = 'stream' AND s.target = a.stream_id)"
          " OR (s.scope = 'rule' AND s.target = a.rule))")
SHELF_COLUMNS = ("id, scope, target, reason, by_whom, auth_method, created_at, expires_at, ended_at, ended_by,"
                 " end_reason")


class ShelfEndedError(ValueError):
    """The shelf was already unshelved or expired."""


@dataclass(frozen=True)
class ShelveRequest:
    scope: Scope
    target: str
    duration_s: float | None  # None: until unshelved
    reason: str


def parse_shelve(body: Any, *, scope: Scope | None = None, target: str | None = None) -> ShelveRequest:
    """A shelve body: {"scope", "target", "duration_s" (seconds, or null: until unshelved), "reason"}; a route
    that names the alert itself passes `scope` and `target`. ValueError says what is wrong. `duration_s` must
    be given (null included): forgetting it must not shelve forever.

    >>> parse_shelve({"scope": "stream", "target": "SAT-001/A-1", "duration_s": 3600, "reason": "safe mode"})
    ShelveRequest(scope='stream', target='SAT-001/A-1', duration_s=3600.0, reason='safe mode')
    >>> parse_shelve({"duration_s": None, "reason": "known"}, scope="alert", target="12").duration_s is None
    True
    >>> parse_shelve({"scope": "rule", "target": "r", "reason": "x"})
    Traceback (most recent call last):
    ...
    ValueError: "duration_s" is required: seconds up to 2678400, or null to shelve until unshelved
    """
    if not isinstance(body, dict):
        raise ValueError('body must be a JSON object: {"duration_s": 3600, "reason": "..."}')
    if "by" in body:
        raise ValueError('"by" is not accepted: the shelf is the logged-in user\'s or the API token owner\'s')
    if scope is None:
        scope = body.get("scope")
        if scope not in SCOPES:
            raise ValueError(f'"scope" must be one of {", ".join(SCOPES)}')
        target = body.get("target")
    if not isinstance(target, str) or not target.strip() or len(target) > 200:
        raise ValueError('"target" must name the alert id, the stream id or the rule (at most 200 characters)')
    target = target.strip()
    if scope == "alert" and not (target.isdigit() and int(target) > 0):
        raise ValueError('an alert shelf\'s "target" is the alert id (a positive integer)')
    if scope == "stream" and (target.count("/") != 1 or "" in target.split("/")):
        raise ValueError('a stream shelf\'s "target" is a stream id: satellite/entity, e.g. SAT-001/A-1')
    if "duration_s" not in body:
        raise ValueError(f'"duration_s" is required: seconds up to {MAX_SHELVE_S}, or null to shelve until '
                         "unshelved")
    raw = body["duration_s"]
    duration: float | None = None
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or \
                not 0 < raw <= MAX_SHELVE_S:
            raise ValueError(f'"duration_s" must be a number of seconds in (0, {MAX_SHELVE_S}], or null')
        duration = float(raw)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f'"reason" is required: why it is shelved (at most {MAX_REASON_CHARS} characters)')
    return ShelveRequest(scope, target, duration, reason.strip())


def parse_unshelve(body: Any) -> str:
    """The reason of an unshelve body {"reason": "..."} (may be empty).

    >>> parse_unshelve({"reason": "back to nominal"})
    'back to nominal'
    """
    if not isinstance(body, dict):
        raise ValueError('body must be a JSON object: {"reason": "..."}')
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f'"reason" must be a string of at most {MAX_REASON_CHARS} characters')
    return reason.strip()


def shelf_json(row: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    active = row["ended_at"] is None and (row["expires_at"] is None or now is None or row["expires_at"] > now)
    return {
        "id": row["id"], "scope": row["scope"], "target": row["target"], "reason": row["reason"],
        "by": row["by_whom"], "auth": row["auth_method"], "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]), "active": active,
        "ended_at": iso(row["ended_at"]), "ended_by": row["ended_by"], "end_reason": row["end_reason"],
    }


async def covering_shelf(conn: AsyncConnection[Any], alert_id: int) -> int | None:
    """The id of an active shelf covering the alert (by its id, stream or rule), or None."""
    cur = await conn.execute(
        f"SELECT s.id FROM shelves s, alerts a WHERE a.id = %s AND {ACTIVE} AND {COVERS} ORDER BY s.id LIMIT 1",
        (alert_id,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def drop_held(conn: AsyncConnection[Any], alert_id: int) -> list[str]:
    """The alert resolved: its held notifications will never be needed. Returns their events."""
    cur = await conn.execute(
        "UPDATE notification_outbox SET status = 'dropped', last_error = 'the alert resolved while shelved'"
        " WHERE alert_id = %s AND status = 'held' RETURNING event", (alert_id,))
    return [str(e) for (e,) in await cur.fetchall()]


async def release_held(conn: AsyncConnection[Any]) -> int:
    """Release the held notifications of every alert no active shelf covers any more; their firings now
    count as notified. Returns how many outbox rows were released."""
    cur = await conn.execute(
        "UPDATE notification_outbox o SET status = 'pending', next_attempt_at = now() FROM alerts a"
        f" WHERE o.status = 'held' AND a.id = o.alert_id AND NOT EXISTS (SELECT 1 FROM shelves s WHERE {ACTIVE}"
        f" AND {COVERS}) RETURNING o.alert_id, o.event")
    rows = await cur.fetchall()
    fired = sorted({int(a) for a, event in rows if event == "firing"})
    if fired:
        await conn.execute("UPDATE alerts SET notified = TRUE WHERE id = ANY(%s)", (fired,))
    return len(rows)


async def create_shelf(conn: AsyncConnection[Any], req: ShelveRequest, who: Principal) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO shelves (scope, target, reason, by_whom, user_id, auth_method, expires_at) VALUES"
            " (%s, %s, %s, %s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL"
            "  ELSE now() + make_interval(secs => %s::float8) END)"
            f" RETURNING {SHELF_COLUMNS}, now() AS now",
            (req.scope, req.target, req.reason, who.username, who.user_id, who.method, req.duration_s,
             req.duration_s))
        row = await cur.fetchone()
    assert row is not None
    shelf = shelf_json(row, row["now"])
    await insert_audit(conn, who, "shelved", f"{req.scope}:{req.target}",
                       {"shelf": shelf["id"], "duration_s": req.duration_s, "reason": req.reason,
                        "expires_at": shelf["expires_at"]})
    return shelf


async def end_shelf(conn: AsyncConnection[Any], shelf_id: int, who: Principal, reason: str
                    ) -> dict[str, Any] | None:
    """Unshelve; None: no such shelf; ShelfEndedError: it already ended (unshelved or expired)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {SHELF_COLUMNS}, now() AS now FROM shelves WHERE id = %s FOR UPDATE",
                          (shelf_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        if not shelf_json(row, row["now"])["active"]:
            raise ShelfEndedError(f"shelf {shelf_id} already ended ({row['ended_by'] or EXPIRY})")
        await cur.execute(
            f"UPDATE shelves SET ended_at = now(), ended_by = %s, end_reason = %s WHERE id = %s"
            f" RETURNING {SHELF_COLUMNS}, now() AS now", (who.username, reason, shelf_id))
        row = await cur.fetchone()
    assert row is not None
    await insert_audit(conn, who, "unshelved", f"{row['scope']}:{row['target']}",
                       {"shelf": shelf_id, "reason": reason})
    await release_held(conn)
    return shelf_json(row, row["now"])


async def sweep(conn: AsyncConnection[Any]) -> tuple[list[int], int]:
    """End the shelves whose time is up (audited as the system's) and release what no shelf covers any more.
    Returns (the expired shelves' ids, the released notifications)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE shelves SET ended_at = expires_at, ended_by = %s, end_reason = 'expired'"
            " WHERE ended_at IS NULL AND expires_at <= now() RETURNING id, scope, target, expires_at", (EXPIRY,))
        expired = await cur.fetchall()
    for row in expired:
        await insert_audit(conn, None, "shelf_expired", f"{row['scope']}:{row['target']}",
                           {"shelf": row["id"], "expires_at": iso(row["expires_at"])}, username="system",
                           method="system")
    return [int(r["id"]) for r in expired], await release_held(conn)


async def list_shelves(conn: AsyncConnection[Any], *, active: bool | None, scope: str | None, target: str | None,
                       limit: int) -> list[dict[str, Any]]:
    where = ["true"]
    params: list[Any] = []
    if active is not None:
        where.append(ACTIVE if active else f"NOT ({ACTIVE})")
    if scope is not None:
        where.append("s.scope = %s")
        params.append(scope)
    if target is not None:
        where.append("s.target = %s")
        params.append(target)
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {', '.join('s.' + c.strip() for c in SHELF_COLUMNS.split(','))}, now() AS now FROM shelves s"
            f" WHERE {' AND '.join(where)} ORDER BY s.id DESC LIMIT %s", params)
        return [shelf_json(r, r["now"]) for r in await cur.fetchall()]
