"""The administrator's CLI (users and tokens live in PostgreSQL: AUTH_DATABASE_URL).

    python -m smap_shared.auth create-user NAME --role admin     # asks for the password (or --password-stdin)
    python -m smap_shared.auth create-user feed --role ingest --no-password
    python -m smap_shared.auth create-token NAME --name "ground segment feed"   # prints the token once
    python -m smap_shared.auth set-password NAME | disable NAME | enable NAME | list-users
    python -m smap_shared.auth bootstrap --password-file PATH    # start-smap.sh: a first admin, once
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from smap_shared.alerting.store import ensure_database, migrate
from smap_shared.auth.credentials import ROLES, Principal
from smap_shared.auth.store import AuthError, AuthStore
from smap_shared.settings import AlertManagerSettings

CLI = Principal("cli", "admin", "off")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise AuthError("the two passwords differ")
    return first


async def _run(args: argparse.Namespace) -> int:
    url = AlertManagerSettings().users_database_url
    await ensure_database(url)
    await migrate(url)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
        store = AuthStore(pool)
        who = f"cli:{getpass.getuser()}"
        if args.command == "create-user":
            password = None if args.no_password else _password(args)
            await store.create_user(args.name, args.role, password, by=who)
            await store.audit(CLI, "user_created", args.name, {"role": args.role}, username=who)
            print(f"created {args.role} {args.name}")
        elif args.command == "create-token":
            token = await store.create_token(args.name, args.label)
            await store.audit(CLI, "token_created", args.name, {"name": args.label}, username=who)
            print(token)
        elif args.command == "set-password":
            await store.set_password(args.name, _password(args))
            await store.audit(CLI, "password_set", args.name, username=who)
            print(f"password of {args.name} set; their sessions ended")
        elif args.command in ("disable", "enable"):
            await store.set_disabled(args.name, args.command == "disable")
            await store.audit(CLI, f"user_{args.command}d", args.name, username=who)
            print(f"{args.name} {args.command}d")
        elif args.command == "list-users":
            for user in await store.list_users():
                state = " (disabled)" if user["disabled"] else ""
                print(f"{user['username']:24} {user['role']:9} tokens={user['tokens']}{state}")
        elif args.command == "bootstrap":
            return await _bootstrap(store, Path(args.password_file), who)
    return 0


async def _bootstrap(store: AuthStore, path: Path, who: str) -> int:
    """A first admin `admin` with a random password written to `path` (mode 0600), only while no user exists."""
    if await store.count_users():
        return 0
    password = secrets.token_urlsafe(18)
    await store.create_user("admin", "admin", password, by=who)
    await store.audit(CLI, "user_created", "admin", {"role": "admin", "bootstrap": True}, username=who)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    print(f"created the first admin: user admin, password in {path} (change it: "
          "python -m smap_shared.auth set-password admin)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smap_shared.auth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p: Any = sub.add_parser("create-user", help="add a user")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--no-password", action="store_true", help="token-only (e.g. an ingest feed)")
    p = sub.add_parser("create-token", help="a new API token for a user, printed once")
    p.add_argument("name")
    p.add_argument("--name", dest="label", default="cli", help="what the token is for")
    p = sub.add_parser("set-password", help="set a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    for verb in ("disable", "enable"):
        sub.add_parser(verb).add_argument("name")
    sub.add_parser("list-users")
    p = sub.add_parser("bootstrap", help="create user admin with a random password, if no user exists yet")
    p.add_argument("--password-file", required=True)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (AuthError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
