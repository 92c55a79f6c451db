"""PostgreSQL: the schema (versioned migrations), the consumer's atomic batch write, and the history queries.

One transaction per batch of results holds everything the batch changed: lifecycle states, alerts, their
transitions, the outbox rows of the notifications, and the results topic's next offsets. The consumer seeks
to those offsets on start, so after any crash every record is applied exactly once (see service.py).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from smap_shared.alerting import shelving
from smap_shared.alerting.engine import LifecycleKey, LifecycleState, Transition
from smap_shared.auth.credentials import Principal
from smap_shared.auth.store import insert_audit
from smap_shared.http import iso
from smap_shared.schemas import AlertEvent, SensorContribution

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATION_LOCK = 0x534D4150  # pg advisory lock id ("SMAP"): one migrator at a time
ALERT_COLUMNS = (
    "id, rule, severity, state, satellite_id, entity, sensor, stream_id, score_at_firing, top_sensors, "
    "alarm_causes, started_at, fired_at, resolved_at, acknowledged_at, acknowledged_by, notified, evidence"
)
#: An alert row `a` with the active shelf covering it (if any) and whether a notification of it is held.
ALERT_SELECT = (
    "SELECT " + ", ".join("a." + c.strip() for c in ALERT_COLUMNS.split(",")) + ","
    " sh.id AS shelf_id, sh.scope AS shelf_scope, sh.target AS shelf_target, sh.expires_at AS shelf_expires_at,"
    " sh.by_whom AS shelf_by, sh.reason AS shelf_reason,"
    " EXISTS (SELECT 1 FROM notification_outbox o WHERE o.alert_id = a.id AND o.status = 'held')"
    " AS notification_held,"
    " (SELECT v.verdict FROM alert_verdicts v WHERE v.alert_id = a.id ORDER BY v.id DESC LIMIT 1) AS verdict"
    " FROM alerts a LEFT JOIN LATERAL (SELECT s.* FROM shelves s WHERE " + shelving.ACTIVE + " AND "
    + shelving.COVERS + " ORDER BY s.expires_at DESC NULLS FIRST, s.id LIMIT 1) sh ON true"
)
STATES = ("pending", "firing", "resolved")
#: An operator's judgement of an alert (ESA's anomaly-detection benchmark's categories).
VERDICTS = ("true_anomaly", "false_alarm", "rare_nominal_event")
LABEL_COLUMNS = ("chan_id", "spacecraft", "anomaly_sequences", "class", "num_values")
SEVERITIES = ("info", "warning", "critical")


# ---------------------------------------------------------------- database and migrations


async def ensure_database(url: str) -> bool:
    """Create the database named in `url` when missing (connecting to the server's `postgres` database).
    True when it was created."""
    name = conninfo_to_dict(url).get("dbname")
    if not name:
        raise ValueError(f"alert database URL names no database: {url!r}")
    admin = make_conninfo(url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if await cur.fetchone():
            return False
        try:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:
            return False  # created meanwhile by another instance
    log.info("created database %s", name)
    return True


async def drop_database(url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    admin = make_conninfo(url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of the packaged migrations, in version order."""
    folder = resources.files("smap_shared.alerting").joinpath("migrations")
    out = []
    for entry in folder.iterdir():
        m = MIGRATION_NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise ValueError(f"migration file {entry.name} is not named NNNN_name.sql")
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version: {versions}")
    return out


async def migrate(url: str) -> list[int]:
    """Apply the migrations not yet recorded in schema_migrations, each in its own transaction together
    with its record; returns the versions applied now."""
    applied_now = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, name, text in migrations():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur = await conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,))
                if await cur.fetchone():
                    continue
                await conn.execute(text.encode())  # several statements: no parameters, simple protocol
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied_now.append(version)
                log.info("applied migration %04d_%s", version, name)
    return applied_now


# ---------------------------------------------------------------- rows -> JSON


def alert_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "rule": row["rule"], "severity": row["severity"], "state": row["state"],
        "satellite_id": row["satellite_id"], "entity": row["entity"], "sensor": row["sensor"],
        "stream_id": row["stream_id"], "score_at_firing": row["score_at_firing"],
        "top_sensors": row["top_sensors"], "alarm_causes": row["alarm_causes"],
        "started_at": iso(row["started_at"]), "fired_at": iso(row["fired_at"]),
        "resolved_at": iso(row["resolved_at"]), "acknowledged_at": iso(row["acknowledged_at"]),
        "acknowledged_by": row["acknowledged_by"], "acknowledged": row["acknowledged_at"] is not None,
        "notified": row["notified"], "notification_held": row["notification_held"], "evidence": row["evidence"],
        "shelved": row["shelf_id"] is not None, "verdict": row["verdict"],
        "shelf": None if row["shelf_id"] is None else {
            "id": row["shelf_id"], "scope": row["shelf_scope"], "target": row["shelf_target"],
            "expires_at": iso(row["shelf_expires_at"]), "by": row["shelf_by"], "reason": row["shelf_reason"]},
    }


# ---------------------------------------------------------------- the consumer's batch


class OffsetConflictError(RuntimeError):
    """The stored offset of a partition moved under this consumer: the batch was not applied."""


@dataclass(frozen=True)
class AppliedBatch:
    events: list[AlertEvent]
    open_alerts: dict[LifecycleKey, int]  # the lifecycles' open alert ids after the batch
    notifications: int


class NotificationRenderer(Protocol):
    """What the store needs to turn a notified transition into outbox rows (notifiers.Renderer fits)."""

    def render(self, transition: Transition, alert_id: int, notification_id: uuid.UUID
               ) -> list[tuple[str, dict[str, Any]]]: ...


def _event(t: Transition, alert_id: int, message: str, shelved: bool) -> AlertEvent:
    return AlertEvent(
        event=t.to_state, alert_id=alert_id, rule=t.rule.name, severity=t.rule.severity, state=t.to_state,
        satellite_id=t.satellite_id, entity=t.entity, sensor=t.sensor, stream_id=t.stream_id, score=t.score,
        top_sensors=list(t.top_sensors), alarm_causes=list(t.alarm_causes), started_at=t.started_at, at=t.at,
        message=message, shelved=shelved, evidence=t.evidence,
    )


class AlertStore:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    # ------------------------------------------------------------ consumer state
    async def load_states(self) -> tuple[dict[LifecycleKey, LifecycleState], dict[LifecycleKey, int]]:
        states: dict[LifecycleKey, LifecycleState] = {}
        open_alerts: dict[LifecycleKey, int] = {}
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT rule, stream_key, state, alert_id FROM lifecycle_states")
            for rule, key, state, alert_id in await cur.fetchall():
                states[(rule, key)] = LifecycleState.from_json(state)
                if alert_id is not None:
                    open_alerts[(rule, key)] = alert_id
        return states, open_alerts

    async def load_offsets(self, group_id: str, topic: str) -> dict[int, int]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s AND topic = %s",
                (group_id, topic))
            return {p: o for p, o in await cur.fetchall()}

    async def apply_batch(
        self, transitions: Sequence[Transition], states: Mapping[LifecycleKey, LifecycleState],
        open_alerts: Mapping[LifecycleKey, int], offsets: Mapping[int, tuple[int | None, int]], *, group_id: str,
        topic: str, renderer: NotificationRenderer,
    ) -> AppliedBatch:
        """One transaction: the transitions (alerts, history, outbox), the changed lifecycle states and
        the next offsets per partition. Nothing of it is visible unless all of it is.

        `offsets` maps a partition to (the next offset this consumer believes is stored, None for no row;
        the batch's next offset). The stored value must still be the believed one, else OffsetConflictError
        and nothing is written: another member applied the partition meanwhile (a rebalance), and the
        batch must not be applied a second time."""
        opened = dict(open_alerts)
        events: list[AlertEvent] = []
        notifications = 0
        async with self.pool.connection() as conn, conn.transaction():
            for t in transitions:
                if t.from_state is None:
                    cur = await conn.execute(
                        "INSERT INTO alerts (rule, severity, state, satellite_id, entity, sensor, stream_id,"
                        " stream_key, started_at, first_index, evidence)"
                        " VALUES (%s,%s,'pending',%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                        (t.rule.name, t.rule.severity, t.satellite_id, t.entity, t.sensor, t.stream_id, t.key[1],
                         t.started_at, t.index,
                         None if t.evidence is None else Jsonb(t.evidence.model_dump(mode="json"))))
                    row = await cur.fetchone()
                    assert row is not None
                    opened[t.key] = alert_id = int(row[0])
                else:
                    alert_id = opened[t.key]
                notify, message = t.notify, t.message
                shelf = None
                # a firing still held by a shelf is dropped at resolution: nobody was told, so no all-clear
                if t.to_state == "resolved" and "firing" in await shelving.drop_held(conn, alert_id):
                    notify, message = False, message + "; its held firing notification was dropped"
                if notify:
                    shelf = await shelving.covering_shelf(conn, alert_id)
                    if shelf is not None:
                        message += f"; notification held: shelved (shelf {shelf})"
                if t.to_state == "firing":
                    await conn.execute(
                        "UPDATE alerts SET state = 'firing', fired_at = %s, fired_index = %s,"
                        " score_at_firing = %s, top_sensors = %s, alarm_causes = %s, notified = %s WHERE id = %s",
                        (t.at, t.index, t.score, Jsonb([s.model_dump() for s in t.top_sensors]),
                         Jsonb(list(t.alarm_causes)), notify and shelf is None, alert_id))
                elif t.to_state == "resolved":
                    await conn.execute(
                        "UPDATE alerts SET state = 'resolved', resolved_at = %s WHERE id = %s", (t.at, alert_id))
                    opened.pop(t.key, None)
                await conn.execute(
                    "INSERT INTO alert_transitions (alert_id, from_state, to_state, at, frame_index, score,"
                    " message) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                    (alert_id, t.from_state, t.to_state, t.at, t.index, t.score, message))
                if notify:
                    nid = uuid.uuid4()
                    for channel, payload in renderer.render(t, alert_id, nid):
                        # one id per (transition, channel): a receiver dedupes on it. Under a shelf the row
                        # waits as 'held' (shelving.py releases it when no shelf covers the alert any more)
                        channel_nid = uuid.uuid5(nid, channel)
                        await conn.execute(
                            "INSERT INTO notification_outbox (notification_id, alert_id, channel, event, payload,"
                            " status, held_by) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                            (channel_nid, alert_id, channel, t.to_state, Jsonb(payload),
                             "pending" if shelf is None else "held", shelf))
                        notifications += shelf is None
                events.append(_event(t, alert_id, message, shelved=shelf is not None))
            rows = [(rule, key, Jsonb(st.to_json()), opened.get((rule, key)))
                    for (rule, key), st in states.items()]
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO lifecycle_states (rule, stream_key, state, alert_id) VALUES (%s,%s,%s,%s)"
                        " ON CONFLICT (rule, stream_key) DO UPDATE SET state = EXCLUDED.state,"
                        " alert_id = EXCLUDED.alert_id, updated_at = now()", rows)
            for partition, (believed, new) in offsets.items():
                if believed is None:
                    cur = await conn.execute(
                        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)"
                        " VALUES (%s,%s,%s,%s) ON CONFLICT DO NOTHING", (group_id, topic, partition, new))
                else:
                    cur = await conn.execute(
                        "UPDATE consumer_offsets SET next_offset = %s, updated_at = now() WHERE group_id = %s"
                        " AND topic = %s AND partition = %s AND next_offset = %s",
                        (new, group_id, topic, partition, believed))
                if cur.rowcount != 1:
                    raise OffsetConflictError(f"{topic}[{partition}]: stored offset is no longer {believed}")
        return AppliedBatch(events, opened, notifications)

    # ------------------------------------------------------------ history (the API)
    async def list_alerts(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        where: list[sql.Composable] = []
        params: list[Any] = []
        for column in ("state", "severity", "satellite_id", "entity", "rule"):
            if filters.get(column) is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier("a", column)))
                params.append(filters[column])
        if filters.get("acknowledged") is not None:
            where.append(sql.SQL("a.acknowledged_at IS NOT NULL" if filters["acknowledged"]
                                 else "a.acknowledged_at IS NULL"))
        if filters.get("open") is not None:  # open: pending or firing
            where.append(sql.SQL("a.state <> 'resolved'" if filters["open"] else "a.state = 'resolved'"))
        if filters.get("shelved") is not None:
            where.append(sql.SQL("sh.id IS NOT NULL" if filters["shelved"] else "sh.id IS NULL"))
        query = sql.SQL("{} {} ORDER BY a.started_at DESC, a.id DESC LIMIT %s").format(
            sql.SQL(ALERT_SELECT),
            sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
        params.append(limit)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return [alert_json(r) for r in await cur.fetchall()]

    async def get_alert(self, alert_id: int) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql.SQL(ALERT_SELECT + " WHERE a.id = %s"), (alert_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            alert = alert_json(row)
            await cur.execute(
                "SELECT from_state, to_state, at, frame_index, score, message, recorded_at FROM alert_transitions"
                " WHERE alert_id = %s ORDER BY id", (alert_id,))
            alert["transitions"] = [
                {"from": r["from_state"], "to": r["to_state"], "at": iso(r["at"]), "index": r["frame_index"],
                 "score": r["score"], "message": r["message"], "recorded_at": iso(r["recorded_at"])}
                for r in await cur.fetchall()]
            await cur.execute(
                "SELECT o.id, o.notification_id, o.channel, o.event, o.status, o.attempts, o.last_error,"
                " o.created_at, o.delivered_at FROM notification_outbox o WHERE o.alert_id = %s ORDER BY o.id",
                (alert_id,))
            alert["deliveries"] = [
                {"id": r["id"], "notification_id": str(r["notification_id"]), "channel": r["channel"],
                 "event": r["event"], "status": r["status"], "attempts": r["attempts"],
                 "last_error": r["last_error"], "created_at": iso(r["created_at"]),
                 "delivered_at": iso(r["delivered_at"])}
                for r in await cur.fetchall()]
            await cur.execute(
                "SELECT outbox_id, channel, attempt, ok, detail, duration_ms, at FROM delivery_log"
                " WHERE alert_id = %s ORDER BY id", (alert_id,))
            alert["delivery_log"] = [
                {**r, "at": iso(r["at"])} for r in await cur.fetchall()]
            await cur.execute(
                "SELECT by_whom, note, at, auth_method FROM alert_acknowledgements WHERE alert_id = %s"
                " ORDER BY id",
                (alert_id,))
            alert["acknowledgements"] = [
                {"by": r["by_whom"], "note": r["note"], "at": iso(r["at"]), "auth": r["auth_method"]}
                for r in await cur.fetchall()]
            await cur.execute(
                "SELECT verdict, comment, by_whom, auth_method, at FROM alert_verdicts WHERE alert_id = %s"
                " ORDER BY id", (alert_id,))
            alert["verdicts"] = [
                {"verdict": r["verdict"], "comment": r["comment"], "by": r["by_whom"], "auth": r["auth_method"],
                 "at": iso(r["at"])} for r in await cur.fetchall()]
            alert["verdict"] = alert["verdicts"][-1]["verdict"] if alert["verdicts"] else None
            return alert

    async def acknowledge(self, alert_id: int, who: Principal, note: str) -> dict[str, Any] | None:
        """Record an acknowledgement by the authenticated `who`; the alert keeps its first acknowledger.
        None: no such alert."""
        by = who.username
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE alerts SET acknowledged_at = COALESCE(acknowledged_at, now()),"
                " acknowledged_by = COALESCE(acknowledged_by, %s) WHERE id = %s RETURNING id", (by, alert_id))
            if await cur.fetchone() is None:
                return None
            await conn.execute(
                "INSERT INTO alert_acknowledgements (alert_id, by_whom, note, user_id, auth_method)"
                " VALUES (%s,%s,%s,%s,%s)", (alert_id, by, note, who.user_id, who.method))
            await insert_audit(conn, who, "alert_acknowledged", str(alert_id), {"note": note})
        return await self.get_alert(alert_id)


    async def record_verdict(self, alert_id: int, who: Principal, verdict: str, comment: str
                             ) -> dict[str, Any] | None:
        """Record `who`'s verdict (the latest is the alert's; every one is kept and audited). None: no alert."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM alerts WHERE id = %s", (alert_id,))
            if await cur.fetchone() is None:
                return None
            await conn.execute(
                "INSERT INTO alert_verdicts (alert_id, verdict, comment, by_whom, user_id, auth_method)"
                " VALUES (%s,%s,%s,%s,%s,%s)", (alert_id, verdict, comment, who.username, who.user_id, who.method))
            await insert_audit(conn, who, "verdict_recorded", str(alert_id),
                               {"verdict": verdict, "comment": comment})
        return await self.get_alert(alert_id)

    # ------------------------------------------------------------ shelving (shelving.py)
    async def shelve(self, req: shelving.ShelveRequest, who: Principal) -> dict[str, Any] | None:
        """Create a shelf (audited); None: its alert does not exist."""
        async with self.pool.connection() as conn, conn.transaction():
            if req.scope == "alert":
                cur = await conn.execute("SELECT 1 FROM alerts WHERE id = %s", (int(req.target),))
                if await cur.fetchone() is None:
                    return None
            return await shelving.create_shelf(conn, req, who)

    async def unshelve(self, shelf_id: int, who: Principal, reason: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn, conn.transaction():
            return await shelving.end_shelf(conn, shelf_id, who, reason)

    async def list_shelves(self, *, active: bool | None, scope: str | None = None, target: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await shelving.list_shelves(conn, active=active, scope=scope, target=target, limit=limit)

    async def sweep_shelves(self) -> tuple[list[int], int]:
        async with self.pool.connection() as conn, conn.transaction():
            return await shelving.sweep(conn)

    async def verdict_labels(self, satellite_id: str | None = None) -> list[dict[str, str]]:
        """Rows of telemanom's labeled_anomalies.csv from the alerts whose latest verdict is true_anomaly:
        chan_id = entity, spacecraft = satellite, one [first, last] frame-index interval per alert (last: the
        frame before it resolved, or its latest transition while still open); num_values is left empty (the
        channel's length is the data's, not the alert's)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.entity, a.satellite_id, a.first_index,"
                " COALESCE((SELECT t.frame_index - 1 FROM alert_transitions t WHERE t.alert_id = a.id"
                "           AND t.to_state = 'resolved' ORDER BY t.id DESC LIMIT 1),"
                "          (SELECT max(t.frame_index) FROM alert_transitions t WHERE t.alert_id = a.id))"
                " FROM alerts a JOIN LATERAL (SELECT v.verdict FROM alert_verdicts v WHERE v.alert_id = a.id"
                "                            ORDER BY v.id DESC LIMIT 1) v ON true"
                " WHERE v.verdict = 'true_anomaly' AND (%s::text IS NULL OR a.satellite_id = %s)"
                " ORDER BY a.satellite_id, a.entity, a.first_index", (satellite_id, satellite_id))
            rows = await cur.fetchall()
        grouped: dict[tuple[str, str], list[list[int]]] = {}
        for entity, sat, first, last in rows:
            grouped.setdefault((entity, sat), []).append([int(first), int(max(first, last))])
        return [{"chan_id": entity, "spacecraft": sat, "anomaly_sequences": json.dumps(spans),
                 "class": "[" + ", ".join(["operator_verdict"] * len(spans)) + "]", "num_values": ""}
                for (entity, sat), spans in grouped.items()]


def event_of_alert(alert: Mapping[str, Any], event: str, message: str = "", at: datetime | None = None
                   ) -> AlertEvent:
    """An AlertEvent (acknowledgements, shelving) from an alert as the API returns it; `at` defaults to the
    acknowledgement's time."""
    at = at or alert["acknowledged_at"] or alert["started_at"]
    return AlertEvent.model_validate({
        "event": event, "alert_id": alert["id"], "rule": alert["rule"], "severity": alert["severity"],
        "state": alert["state"], "satellite_id": alert["satellite_id"], "entity": alert["entity"],
        "sensor": alert["sensor"], "stream_id": alert["stream_id"], "score": alert["score_at_firing"] or 0.0,
        "top_sensors": [SensorContribution.model_validate(s) for s in alert["top_sensors"]],
        "alarm_causes": alert.get("alarm_causes") or [],
        "started_at": alert["started_at"], "at": at, "acknowledged": alert["acknowledged"],
        "shelved": alert.get("shelved", False), "evidence": alert.get("evidence"), "message": message,
    })


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
