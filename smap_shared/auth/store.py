"""Users, API tokens, sessions and the audit log in PostgreSQL (the alert manager's database; the tables come
from its migrations, smap_shared/alerting/migrations/0003_users_sessions_audit.sql).

scrypt is deliberately slow (~50 ms): it runs in a thread, at most `HASH_CONCURRENCY` at once, so a flood of
logins queues instead of starving the event loop; a token once verified is remembered for `TOKEN_CACHE_S`
(so a revoked token stops working within that time).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from smap_shared.auth.credentials import (
    DUMMY_HASH,
    Principal,
    check_password,
    check_role,
    check_username,
    hash_secret,
    new_session,
    new_token,
    parse_token,
    session_digest,
    verify_secret,
)
from smap_shared.http import iso

HASH_CONCURRENCY = 2
TOKEN_CACHE_S = 30.0


async def insert_audit(conn: AsyncConnection[Any], who: Principal | None, action: str, target: str = "",
                       detail: dict[str, Any] | None = None, *, username: str | None = None,
                       method: str | None = None) -> None:
    """One audit_log row on `conn`, so an action and its record commit in the same transaction (`who` None
    with `username` and `method`: the system's own action, e.g. a shelf's expiry)."""
    await conn.execute(
        "INSERT INTO audit_log (username, user_id, method, action, target, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (username or (who.username if who else "anonymous"), who.user_id if who else None,
         method or (who.method if who else "anonymous"), action, target, Jsonb(detail or {})))


class AuthError(ValueError):
    """A user, role or password that cannot be accepted (the message says why)."""


class AuthStore:
    def __init__(self, pool: AsyncConnectionPool[Any], session_hours: float = 12.0) -> None:
        self.pool = pool
        self.session_hours = session_hours
        self._hashing = asyncio.Semaphore(HASH_CONCURRENCY)
        self._tokens: dict[str, tuple[Principal, float]] = {}

    async def _hash(self, secret: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(hash_secret, secret)

    async def _verify(self, secret: str, encoded: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(verify_secret, secret, encoded)

    # ------------------------------------------------------------ users
    async def create_user(self, username: str, role: str, password: str | None, by: str = "") -> int:
        check_username(username)
        check_role(role)
        hashed = None if password is None else await self._hash(check_password(password))
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO users (username, role, password_hash, created_by) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (username) DO NOTHING RETURNING id", (username, role, hashed, by))
            row = await cur.fetchone()
        if row is None:
            raise AuthError(f"user {username!r} exists already")
        return int(row[0])

    async def set_password(self, username: str, password: str) -> None:
        hashed = await self._hash(check_password(password))
        async with self.pool.connection() as conn:
            cur = await conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (hashed, username))
            if cur.rowcount != 1:
                raise AuthError(f"no user {username!r}")
            await conn.execute("DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = %s)",
                               (username,))

    async def set_disabled(self, username: str, disabled: bool) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute("UPDATE users SET disabled = %s WHERE username = %s", (disabled, username))
            if cur.rowcount != 1:
                raise AuthError(f"no user {username!r}")
            if disabled:
                await conn.execute(
                    "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = %s)", (username,))
        self._tokens.clear()

    async def list_users(self) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT u.id, u.username, u.role, u.disabled, u.created_by, u.created_at,"
                " u.password_hash IS NOT NULL AS has_password,"
                " (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL) AS tokens"
                " FROM users u ORDER BY u.id")
            rows = await cur.fetchall()
        return [{**r, "created_at": iso(r["created_at"])} for r in rows]

    async def count_users(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM users")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ passwords and sessions
    async def login(self, username: str, password: str) -> tuple[Principal, str] | None:
        """(principal, session id for the cookie) when the password is right; None otherwise (also for an
        unknown or disabled user, after the same work)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, role, password_hash, disabled FROM users WHERE username = %s", (username,))
            row = await cur.fetchone()
        encoded = row[2] if row is not None and row[2] else DUMMY_HASH
        ok = await self._verify(password, encoded)
        if row is None or not row[2] or row[3] or not ok:
            return None
        sid, digest, csrf = new_session()
        expires = datetime.now(UTC) + timedelta(hours=self.session_hours)
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM sessions WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO sessions (id_digest, user_id, csrf_token, expires_at) VALUES (%s, %s, %s, %s)",
                (digest, row[0], csrf, expires))
        return Principal(username, check_role(row[1]), "session", int(row[0]), csrf), sid

    async def session(self, sid: str) -> Principal | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT u.id, u.username, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id"
                " WHERE s.id_digest = %s AND s.expires_at > now() AND NOT u.disabled", (session_digest(sid),))
            row = await cur.fetchone()
        if row is None:
            return None
        return Principal(row[1], check_role(row[2]), "session", int(row[0]), row[3])

    async def logout(self, sid: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM sessions WHERE id_digest = %s", (session_digest(sid),))

    # ------------------------------------------------------------ API tokens
    async def create_token(self, username: str, name: str) -> str:
        """A new token for `username`, returned once (only its hash is kept)."""
        if not 1 <= len(name) <= 200:
            raise AuthError("a token's name has 1 to 200 characters")
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT id FROM users WHERE username = %s", (username,))
            row = await cur.fetchone()
            if row is None:
                raise AuthError(f"no user {username!r}")
            cur = await conn.execute(
                "INSERT INTO api_tokens (user_id, name, secret_hash) VALUES (%s, %s, '') RETURNING id",
                (row[0], name))
            tid = await cur.fetchone()
            assert tid is not None
            token, secret = new_token(int(tid[0]))
            await conn.execute("UPDATE api_tokens SET secret_hash = %s WHERE id = %s",
                               (await self._hash(secret), tid[0]))
        return token

    async def revoke_token(self, token_id: int) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (token_id,))
        self._tokens.clear()
        return bool(cur.rowcount == 1)

    async def token(self, token: str) -> Principal | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        token_id, secret = parsed
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT u.id, u.username, u.role, t.secret_hash FROM api_tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.id = %s AND t.revoked_at IS NULL AND NOT u.disabled", (token_id,))
            row = await cur.fetchone()
        if row is None or not await self._verify(secret, row[3]):
            return None
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (token_id,))
        principal = Principal(row[1], check_role(row[2]), "token", int(row[0]))
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[key] = (principal, time.monotonic() + TOKEN_CACHE_S)
        return principal

    # ------------------------------------------------------------ audit
    async def audit(self, who: Principal | None, action: str, target: str = "",
                    detail: dict[str, Any] | None = None, *, username: str | None = None) -> None:
        async with self.pool.connection() as conn:
            await insert_audit(conn, who, action, target, detail, username=username)

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, at, username, method, action, target, detail FROM audit_log ORDER BY id DESC LIMIT %s",
                (limit,))
            rows = await cur.fetchall()
        return [{**r, "at": iso(r["at"])} for r in rows]
