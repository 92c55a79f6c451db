"""Roles, permissions, and the secrets' formats and hashes: pure functions, no I/O.

Passwords and API tokens are stored only as scrypt hashes (salted, memory-hard); a session id is a
256-bit random value stored as its SHA-256 (it is looked up on every request, and a hash of a random
256-bit value cannot be reversed or guessed, unlike a password's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "operator", "ingest", "admin"]
Permission = Literal["read", "operate", "ingest", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "ingest", "admin")

#: What each role may do. `ingest` is a ground segment's feed: it writes telemetry and reads nothing.
GRANTS: dict[Role, frozenset[Permission]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "operate"}),
    "ingest": frozenset({"ingest"}),
    "admin": frozenset({"read", "operate", "ingest", "admin"}),
}

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD = 12
TOKEN_PREFIX = "smap_"
TOKEN = re.compile(r"^smap_(\d{1,18})_([A-Za-z0-9_-]{43})$")

# scrypt: N=2^14, r=8, p=1 (16 MiB, ~50 ms here): the interactive-login parameters of the scrypt paper and
# of Python's hashlib documentation.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32


def allows(role: str, permission: Permission) -> bool:
    """What `role` is granted.

    >>> allows("operator", "operate"), allows("viewer", "operate"), allows("ingest", "read")
    (True, False, False)
    """
    return role in GRANTS and permission in GRANTS[role]  # type: ignore[index]


def check_username(name: str) -> str:
    if not USERNAME.match(name):
        raise ValueError("a user name is 1-64 characters: lower-case letters, digits, '.', '_', '-'")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD or len(password) > 1024:
        raise ValueError(f"a password has {MIN_PASSWORD} to 1024 characters")
    return password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash`, a fresh 16-byte salt unless given.

    >>> h = hash_secret("correct horse battery"); h.startswith("scrypt$16384$8$1$")
    True
    >>> verify_secret("correct horse battery", h), verify_secret("wrong", h)
    (True, False)
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN,
                            maxmem=64 * 1024 * 1024)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Constant-time comparison against a stored `hash_secret`; False for anything malformed."""
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        if len(expected) < SCRYPT_LEN:
            return False
        got = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


#: Compared against when a login names no known user, so both answers take the same time.
DUMMY_HASH = hash_secret("no such user: the same work as a real check", salt=b"\0" * 16)


def new_token(token_id: int) -> tuple[str, str]:
    """(token shown once, its secret part to hash). The id lets the server find the row without a search.

    >>> token, secret = new_token(7); parse_token(token) == (7, secret)
    True
    """
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", secret


def parse_token(token: str) -> tuple[int, str] | None:
    """(id, secret) of a well-formed API token, else None.

    >>> parse_token("smap_12_" + "a" * 43)[0], parse_token("Bearer x")
    (12, None)
    """
    m = TOKEN.match(token)
    return (int(m.group(1)), m.group(2)) if m else None


def new_session() -> tuple[str, str, str]:
    """(session id for the cookie, its SHA-256 to store, a CSRF token for the page)."""
    sid = secrets.token_urlsafe(32)
    return sid, session_digest(sid), secrets.token_urlsafe(32)


def session_digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """An address only this machine reaches.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.5")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """Who is acting. `method` is how they proved it: session (the page's cookie), token (Authorization:
    Bearer), or off (SMAP_AUTH=off, local development: everyone is the local developer, with every right)."""

    username: str
    role: Role
    method: Literal["session", "token", "off"]
    user_id: int | None = None
    csrf_token: str | None = None  # session only: what every write must echo in X-CSRF-Token

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)


DEV_PRINCIPAL = Principal("local-dev", "admin", "off")


@dataclass(frozen=True)
class ThrottleLimit:
    scope: Literal["user_address", "address", "user"]
    max_failures: int


#: Failed logins tolerated per 15 minutes: from one address for one user, from one address (an office behind
#: one NAT tries several users), and for one user from anywhere (a distributed guess). Past a limit the next
#: attempt is refused (429) until the oldest failure leaves the window, before any password is checked.
THROTTLE_LIMITS = (ThrottleLimit("user_address", 5), ThrottleLimit("address", 20), ThrottleLimit("user", 50))
THROTTLE_WINDOW_S = 900.0
THROTTLE_MAX_KEYS = 10_000  # memory bound: the oldest keys are forgotten first


class LoginThrottle:
    """Failed logins in a sliding window, per user and address (in memory: one process's view).

    >>> t = LoginThrottle(window_s=60)
    >>> for i in range(5): t.failed("ann", "10.0.0.1", now=float(i))
    >>> t.retry_after("ann", "10.0.0.1", now=5.0)       # the 6th try from there waits for the 1st to expire
    55.0
    >>> t.retry_after("ann", "10.0.0.2", now=5.0) is None  # another address may still try
    True
    >>> t.retry_after("ann", "10.0.0.1", now=61.0) is None
    True
    >>> t.succeeded("bob", "10.0.0.1"); t.retry_after("bob", "10.0.0.1", now=5.0) is None
    True
    """

    def __init__(self, limits: tuple[ThrottleLimit, ...] = THROTTLE_LIMITS, window_s: float = THROTTLE_WINDOW_S,
                 max_keys: int = THROTTLE_MAX_KEYS) -> None:
        self.limits = limits
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[tuple[str, str], list[float]] = {}

    @staticmethod
    def _key(limit: ThrottleLimit, username: str, address: str) -> tuple[str, str]:
        value = {"user_address": f"{username}@{address}", "address": address, "user": username}[limit.scope]
        return (limit.scope, value)

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if t > now - self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, username: str, address: str, now: float) -> float | None:
        """Seconds until this user may try again from this address; None: now."""
        waits = []
        for limit in self.limits:
            times = self._recent(self._key(limit, username, address), now)
            if len(times) >= limit.max_failures:
                waits.append(times[-limit.max_failures] + self.window_s - now)
        return max(waits) if waits else None

    def failed(self, username: str, address: str, now: float) -> None:
        for limit in self.limits:
            key = self._key(limit, username, address)
            self._failures[key] = [*self._recent(key, now), now]
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, username: str, address: str) -> None:
        """A right password clears this user's failures from this address (not the address's or the user's
        counts elsewhere: one success must not reopen a guess at other accounts)."""
        for limit in self.limits:
            if limit.scope == "user_address":
                self._failures.pop(self._key(limit, username, address), None)
