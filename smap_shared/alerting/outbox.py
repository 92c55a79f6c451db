"""The delivery loop of the transactional outbox.

A notification row is written in the transaction that records the firing, so it exists exactly when the
firing does. A deliverer then, in ONE transaction: claims the oldest due row (FOR UPDATE SKIP LOCKED, so
concurrent deliverers and instances never take the same row), sends it, writes the attempt to the delivery
log and marks the row delivered -- or, on failure, schedules the next attempt with exponential backoff.

Guarantee: no notification is lost (a crash before the commit leaves the row pending; it is sent again on
restart) and none is sent twice except in one window: the receiver accepted it, and the process died before
the COMMIT that marks it delivered (microseconds after the answer). That window cannot close without the
receiver's help, so every message carries a stable notification id for it to deduplicate on. A failing
channel only delays its own rows; the results stream is consumed by a different task all the while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from smap_shared.alerting.notifiers import SendResult

log = logging.getLogger(__name__)

Sender = Callable[[str, dict[str, Any]], Awaitable[SendResult]]
IDLE_POLL_S = 1.0


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds before attempt `attempt + 1` after `attempt` failures: base, 2 base, 4 base, ... capped."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


class Outbox:
    def __init__(
        self, pool: AsyncConnectionPool[Any], send: Sender, *, backoff_base_s: float, backoff_max_s: float,
        max_attempts: int,
    ) -> None:
        self.pool = pool
        self.send = send
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_attempts = max_attempts
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failed_attempts = 0

    async def deliver_one(self) -> bool:
        """Claim, send and record one due notification; False when none is due."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, alert_id, channel, payload, attempts FROM notification_outbox"
                " WHERE status = 'pending' AND next_attempt_at <= now()"
                " ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED")
            row = await cur.fetchone()
            if row is None:
                return False
            outbox_id, alert_id, channel, payload, attempts = row
            attempt = attempts + 1
            started = time.perf_counter()
            result = await self.send(channel, payload)
            took_ms = (time.perf_counter() - started) * 1000
            # From here to the COMMIT is the only at-least-once window (the receiver has it, we do not yet).
            await conn.execute(
                "INSERT INTO delivery_log (outbox_id, alert_id, channel, attempt, ok, detail, duration_ms)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (outbox_id, alert_id, channel, attempt, result.ok, result.detail, took_ms))
            if result.ok:
                await conn.execute(
                    "UPDATE notification_outbox SET status = 'delivered', attempts = %s, delivered_at = now(),"
                    " last_error = NULL WHERE id = %s", (attempt, outbox_id))
                self.delivered += 1
                log.info("delivered notification %d (alert %d) on %s after %d attempt(s)", outbox_id, alert_id,
                         channel, attempt)
            elif result.permanent or attempt >= self.max_attempts:
                await conn.execute(
                    "UPDATE notification_outbox SET status = 'failed', attempts = %s, last_error = %s"
                    " WHERE id = %s",
                    (attempt, result.detail, outbox_id))
                self.failed_attempts += 1
                log.error("notification %d (alert %d) on %s failed for good after %d attempt(s): %s", outbox_id,
                          alert_id, channel, attempt, result.detail)
            else:
                delay = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s)
                await conn.execute(
                    "UPDATE notification_outbox SET attempts = %s, last_error = %s,"
                    " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                    (attempt, result.detail, delay, outbox_id))
                self.failed_attempts += 1
                log.warning("notification %d (alert %d) on %s: attempt %d failed (%s); next in %.1f s",
                            outbox_id, alert_id, channel, attempt, result.detail, delay)
        return True

    async def pending(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM notification_outbox WHERE status = 'pending'")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def _worker(self, stop: asyncio.Event) -> None:
        delay = self.backoff_base_s
        while not stop.is_set():
            try:
                if await self.deliver_one():
                    delay = self.backoff_base_s
                    continue
            except Exception as exc:  # the database is away (or a bug): the row stays pending; retry, never die
                if isinstance(exc, psycopg.Error | OSError):
                    log.warning("outbox: database error %r; retrying in %.1f s", exc, delay)
                else:
                    log.exception("outbox: delivery failed unexpectedly; retrying in %.1f s", delay)
                await _sleep_or_stop(stop, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.wake.clear()
            await _first(stop.wait(), self.wake.wait(), timeout=IDLE_POLL_S)

    async def run(self, stop: asyncio.Event, workers: int) -> None:
        await asyncio.gather(*(self._worker(stop) for _ in range(workers)))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _first(*aws: Awaitable[Any], timeout: float) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
