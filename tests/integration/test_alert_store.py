"""The alert store on the real PostgreSQL: versioned migrations, the all-or-nothing batch write with its
offset fencing, and acknowledgements."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alert_harness import query, throwaway_database

from smap_shared.alerting.engine import Engine, LifecycleKey, LifecycleState, Transition
from smap_shared.alerting.rules import load_rules
from smap_shared.alerting.store import AlertStore, OffsetConflictError, migrate, migrations
from smap_shared.auth.credentials import Principal
from smap_shared.schemas import InferenceResult

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class OneChannel:
    def render(self, transition: Transition, alert_id: int, notification_id: uuid.UUID
               ) -> list[tuple[str, dict[str, Any]]]:
        return [("slack", {"text": f"alert {alert_id}"})]


def frame(i: int, detected: bool) -> InferenceResult:
    v = {"sensor_0": 0.5, "sensor_1": 0.9}
    return InferenceResult(
        stream_id="SAT-001/A-1", satellite_id="SAT-001", entity="A-1", model_name="m",
        timestamp=T0 + timedelta(seconds=i), index=i, sensor_values=v, reconstruction=v, sensor_error=v,
        anomaly_score=0.7, anomaly_detected=detected, threshold=1.0, inference_time_ms=1.0)


@pytest.fixture
def db() -> Iterator[str]:
    with throwaway_database() as url:
        assert asyncio.run(migrate(url)) == [v for v, _, _ in migrations()]
        yield url


def test_migrations_are_versioned_and_applied_once(db: str) -> None:
    assert asyncio.run(migrate(db)) == []
    assert query(db, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (1, "alert_history"), (2, "alarm_causes"), (3, "users_sessions_audit"), (4, "verdicts"), (5, "shelves"),
        (6, "alert_evidence")]
    tables = {t for (t,) in query(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"alerts", "alert_transitions", "alert_acknowledgements", "notification_outbox", "delivery_log",
            "lifecycle_states", "consumer_offsets", "schema_migrations", "users", "api_tokens", "sessions",
            "audit_log", "alert_verdicts", "shelves"} <= tables


async def _batch(url: str, believed: int | None, flags: str) -> Any:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(url, min_size=1, max_size=2) as pool:
        store = AlertStore(pool)
        states, opened = await store.load_states()
        changed: dict[LifecycleKey, LifecycleState] = {}
        engine = Engine(load_rules().enabled)
        view = {**states}
        ts = [t for i, f in enumerate(flags) for t in engine.evaluate(frame(i, f == "x"), view)]
        changed = {k: v for k, v in view.items() if states.get(k) != v}
        return await store.apply_batch(ts, changed, opened, {0: (believed, len(flags))}, group_id="g", topic="t",
                                       renderer=OneChannel())


def test_a_batch_is_written_whole_or_not_at_all(db: str) -> None:
    applied = asyncio.run(_batch(db, None, "..xxx"))
    assert [e.event for e in applied.events] == ["pending", "firing"] and applied.notifications == 1
    assert query(db, "SELECT next_offset FROM consumer_offsets") == [(5,)]
    assert query(db, "SELECT state, first_index, fired_index FROM alerts") == [("firing", 2, 4)]
    assert query(db, "SELECT channel, status FROM notification_outbox") == [("slack", "pending")]
    assert query(db, "SELECT alert_id IS NOT NULL FROM lifecycle_states") == [(True,)]
    # a member whose idea of the stored offset is stale (a rebalance raced it) writes nothing at all
    for stale in (None, 3):
        with pytest.raises(OffsetConflictError):
            asyncio.run(_batch(db, stale, "..xxx....."))
    assert query(db, "SELECT count(*) FROM alerts") == [(1,)]
    assert query(db, "SELECT count(*) FROM alert_transitions") == [(2,)]
    assert query(db, "SELECT next_offset FROM consumer_offsets") == [(5,)]


def test_acknowledgement_keeps_the_first_and_records_every_one(db: str) -> None:
    asyncio.run(_batch(db, None, "xxx"))

    async def ack(by: str) -> Any:
        from psycopg_pool import AsyncConnectionPool

        async with AsyncConnectionPool(db, min_size=1, max_size=1) as pool:
            return await AlertStore(pool).acknowledge(1, Principal(by, "operator", "token"), f"note of {by}")

    first, second = asyncio.run(ack("ann")), asyncio.run(ack("bob"))
    assert first["acknowledged_by"] == second["acknowledged_by"] == "ann"
    assert [a["by"] for a in second["acknowledgements"]] == ["ann", "bob"]
    assert asyncio.run(ack("x")) is not None
    assert query(db, "SELECT count(*) FROM alert_acknowledgements") == [(3,)]
    assert query(db, "SELECT username, action, target FROM audit_log ORDER BY id") == [
        (who, "alert_acknowledged", "1") for who in ("ann", "bob", "x")]
