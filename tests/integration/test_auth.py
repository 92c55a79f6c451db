"""Who may do what, on the real services: smap-alert-manager and smap-operation-server as subprocesses with
SMAP_AUTH=on, users created with the administrator's CLI in a throwaway PostgreSQL database, an alert made by
results produced to a private Tansu broker, and VictoriaMetrics behind the operation server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alert_harness import (
    AlertManager,
    WebhookReceiver,
    alert_env,
    make_result,
    query,
    smtp_server,
    tansu,
    throwaway_database,
    wait_until,
)
from browser import chromium_page
from kafka_io import produce

from smap_shared.auth.credentials import parse_token, verify_secret
from smap_shared.data.labels import Interval, parse_labelled
from smap_shared.infra.chain import REPO_ROOT
from smap_shared.infra.ports import free_port
from smap_shared.operations.harness import OperationServer, Victoria

pytestmark = pytest.mark.integration

PASSWORDS = {"ada": "admin-password-123", "otto": "operator-password-1", "vera": "viewer-password-12"}
ROLES = {"ada": "admin", "otto": "operator", "vera": "viewer", "feed": "ingest"}


def cli(db: str, *args: str, stdin: str = "") -> str:
    env = {**os.environ, "ALERT_DATABASE_URL": db}
    out = subprocess.run([sys.executable, "-m", "smap_shared.auth", *args], input=stdin, env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def call(url: str, method: str = "GET", body: object | None = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, Any, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null"), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Stack:
    db: str
    manager: AlertManager
    server: OperationServer
    tokens: dict[str, str]
    alert_ids: dict[str, int]  # satellite -> its A-1 alert
    user_ids: dict[str, int]

    @property
    def api(self) -> str:
        return self.server.url

    @property
    def alerts_api(self) -> str:
        return f"http://127.0.0.1:{self.manager.api_port}"

    def login(self, user: str) -> tuple[str, str]:
        """(session cookie value, CSRF token) of a fresh login."""
        status, me, headers = call(f"{self.api}/api/auth/login", "POST",
                                   {"username": user, "password": PASSWORDS[user]})
        assert status == 200 and me["user"] == user and me["role"] == ROLES[user], me
        cookie = SimpleCookie(headers["Set-Cookie"])["smap_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        return cookie.value, me["csrf_token"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("auth")
    with throwaway_database() as db, tansu(logs) as bootstrap, WebhookReceiver().running() as hook, \
            smtp_server() as (smtp_port, _):
        for user in ("ada", "otto", "vera"):
            cli(db, "create-user", user, "--role", ROLES[user], "--password-stdin", stdin=PASSWORDS[user] + "\n")
        cli(db, "create-user", "feed", "--role", "ingest", "--no-password")
        tokens = {user: cli(db, "create-token", user, "--name", "tests") for user in ROLES}
        asyncio.run(produce(bootstrap, "smap-inference-results", [
            (f"SAT-00{s}/A-1".encode(), make_result(f"SAT-00{s}", "A-1", i, 2 <= i < 9))
            for s in (1, 2, 3) for i in range(10)]))
        manager = AlertManager(alert_env(bootstrap, db, hook, smtp_port, SMAP_AUTH="on"), logs)
        vm = Victoria(logs / "vm").start()
        server = OperationServer(logs / "op", vm.url, alert_manager_url=f"http://127.0.0.1:{manager.api_port}",
                                 env={"SMAP_AUTH": "on", "ALERT_DATABASE_URL": db})
        try:
            manager.start()
            wait_until(lambda: query(db, "SELECT count(*) FROM alerts WHERE state = 'firing'") == [(3,)], 60,
                       "three firing alerts", logs)
            server.start()
            # both services open their auth store after they listen (503 until then): wait for it, so the
            # tests see 401/403/2xx and never that start-up race
            for base in (server.url, f"http://127.0.0.1:{manager.api_port}"):
                def ready(base: str = base) -> bool:
                    return call(f"{base}/api/smap/alerts/1/ack", "POST", {})[0] != 503

                wait_until(ready, 60, f"the auth store of {base}", logs)
            ids = dict(query(db, "SELECT satellite_id, id FROM alerts"))
            user_ids = dict(query(db, "SELECT username, id FROM users"))
            yield Stack(db, manager, server, tokens, ids, user_ids)
        finally:
            server.stop()
            manager.stop()
            vm.stop()


def test_writes_need_a_user_with_the_right_role_and_record_who_from_the_token(stack: Stack) -> None:
    alert = stack.alert_ids["SAT-002"]
    for base in (stack.api, stack.alerts_api):  # the operation server's proxy and the alert manager itself
        ack = f"{base}/api/smap/alerts/{alert}/ack"
        status, body, headers = call(ack, "POST", {"note": "n"})
        assert status == 401 and "authentication required" in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert call(ack, "POST", {"note": "n"}, bearer("smap_1_" + "x" * 43))[0] == 401  # a forged token
        status, body, _ = call(ack, "POST", {"note": "n"}, bearer(stack.tokens["vera"]))
        assert status == 403 and "vera (viewer) may not operate" in body["error"]
        assert call(ack, "POST", {"note": "n"}, bearer(stack.tokens["feed"]))[0] == 403
        # the acknowledger comes from the credential: a body naming someone is refused
        status, body, _ = call(ack, "POST", {"by": "mallory", "note": "n"}, bearer(stack.tokens["otto"]))
        assert status == 400 and '"by" is not accepted' in body["error"]
    assert query(stack.db, "SELECT count(*) FROM alert_acknowledgements") == [(0,)]

    status, acked, _ = call(f"{stack.api}/api/smap/alerts/{alert}/ack", "POST", {"note": "on it"},
                            bearer(stack.tokens["otto"]))
    assert status == 200 and acked["acknowledged_by"] == "otto"
    assert query(stack.db, "SELECT by_whom, user_id, auth_method, note FROM alert_acknowledgements") == [
        ("otto", stack.user_ids["otto"], "token", "on it")]
    assert query(stack.db, "SELECT username, user_id, method FROM audit_log WHERE action = 'alert_acknowledged'"
                 ) == [("otto", stack.user_ids["otto"], "token")]
    # reads: a viewer may, an ingest feed and an anonymous caller may not
    assert call(f"{stack.api}/api/smap/alerts", headers=bearer(stack.tokens["vera"]))[0] == 200
    assert call(f"{stack.api}/api/smap/satellites", headers=bearer(stack.tokens["vera"]))[0] == 200
    assert call(f"{stack.api}/api/smap/satellites", headers=bearer(stack.tokens["feed"]))[0] == 403
    assert call(f"{stack.api}/api/smap/satellites")[0] == 401
    assert call(f"{stack.alerts_api}/api/smap/alerts")[0] == 401
    # public: the page (it shows the login), health, the API description
    for path in ("/", "/healthz", "/api/openapi.json"):
        with urllib.request.urlopen(stack.api + path, timeout=10) as resp:
            assert resp.status == 200, path


def test_the_page_session_needs_its_csrf_token_and_this_origin(stack: Stack) -> None:
    alert = stack.alert_ids["SAT-003"]
    ack = f"{stack.api}/api/smap/alerts/{alert}/ack"
    sid, csrf = stack.login("otto")
    cookie = {"Cookie": f"smap_session={sid}"}
    status, me, _ = call(f"{stack.api}/api/auth/me", headers=cookie)
    assert status == 200 and me == {"auth": "on", "user": "otto", "role": "operator", "method": "session",
                                    "csrf_token": csrf}
    # a cross-site form post carries the cookie but cannot know the CSRF token
    status, body, _ = call(ack, "POST", {"note": "x"}, {**cookie, "Origin": "http://evil.example"})
    assert status == 403
    status, body, _ = call(ack, "POST", {"note": "x"}, cookie)
    assert status == 403 and "X-CSRF-Token" in body["error"]
    status, body, _ = call(ack, "POST", {"note": "x"}, {**cookie, "X-CSRF-Token": "guess"})
    assert status == 403
    # the right token from another origin is refused too
    status, body, _ = call(ack, "POST", {"note": "x"},
                           {**cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body["error"]
    host = stack.api.removeprefix("http://")
    status, acked, _ = call(ack, "POST", {"note": "from the page"},
                            {**cookie, "X-CSRF-Token": csrf, "Origin": f"http://{host}"})
    assert status == 200 and acked["acknowledged_by"] == "otto"
    assert query(stack.db, "SELECT by_whom, auth_method FROM alert_acknowledgements WHERE alert_id = %s",
                 (alert,)) == [("otto", "session")]
    # a login from another site is refused; a wrong password answers 401 and is audited
    assert call(f"{stack.api}/api/auth/login", "POST", {"username": "otto", "password": PASSWORDS["otto"]},
                {"Origin": "http://evil.example"})[0] == 403
    assert call(f"{stack.api}/api/auth/login", "POST", {"username": "otto", "password": "wrong-password!"}
                )[0] == 401
    assert call(f"{stack.api}/api/auth/login", "POST", {"username": "nobody", "password": "wrong-password!"}
                )[0] == 401
    assert ("otto",) in query(stack.db, "SELECT username FROM audit_log WHERE action = 'login_failed'")
    # logging out ends the session on the server
    assert call(f"{stack.api}/api/auth/logout", "POST", {}, {**cookie, "X-CSRF-Token": csrf})[0] == 200
    assert call(f"{stack.api}/api/auth/me", headers=cookie)[0] == 401
    assert call(ack, "POST", {"note": "x"}, {**cookie, "X-CSRF-Token": csrf})[0] == 401


def test_secrets_are_stored_only_as_hashes(stack: Stack) -> None:
    sid, _ = stack.login("vera")
    hashes = [h for (h,) in query(stack.db, "SELECT password_hash FROM users WHERE password_hash IS NOT NULL")]
    assert len(hashes) == 3 and all(h.startswith("scrypt$16384$8$1$") for h in hashes)
    assert not any(p in h for h in hashes for p in PASSWORDS.values())
    secrets = [h for (h,) in query(stack.db, "SELECT secret_hash FROM api_tokens")]
    assert len(secrets) == len(ROLES) and all(h.startswith("scrypt$") for h in secrets)
    parts = [parse_token(t) for t in stack.tokens.values()]
    assert all(p is not None for p in parts)
    assert not any(p[1] in h for h in secrets for p in parts if p is not None)  # the 43-character secrets
    digests = [d for (d,) in query(stack.db, "SELECT id_digest FROM sessions")]
    assert sid not in digests and all(len(d) == 64 for d in digests)


def test_admin_manages_users_and_tokens_over_the_api(stack: Stack) -> None:
    users = f"{stack.api}/api/auth/users"
    new = {"username": "nina", "role": "operator", "password": "nina-password-12"}
    assert call(users, "POST", new, bearer(stack.tokens["otto"]))[0] == 403
    status, body, _ = call(users, "POST", new, bearer(stack.tokens["ada"]))
    assert status == 201 and body["role"] == "operator"
    assert call(users, "POST", new, bearer(stack.tokens["ada"]))[0] == 409
    assert call(users, "POST", {**new, "username": "bad name"}, bearer(stack.tokens["ada"]))[0] == 400
    short = {**new, "username": "x2", "password": "short"}
    assert call(users, "POST", short, bearer(stack.tokens["ada"]))[0] == 400
    listed = call(users, headers=bearer(stack.tokens["ada"]))[1]["users"]
    assert {u["username"]: u["role"] for u in listed}["nina"] == "operator"
    assert call(users, headers=bearer(stack.tokens["vera"]))[0] == 403
    # anyone makes tokens for themselves; only an admin for someone else
    tokens = f"{stack.api}/api/auth/tokens"
    assert call(tokens, "POST", {"name": "x", "username": "ada"}, bearer(stack.tokens["vera"]))[0] == 403
    status, body, _ = call(tokens, "POST", {"name": "nina's script", "username": "nina"},
                           bearer(stack.tokens["ada"]))
    assert status == 201 and body["token"].startswith("smap_")
    status, me, _ = call(f"{stack.api}/api/auth/me", headers=bearer(body["token"]))
    assert status == 200 and (me["user"], me["method"], me["csrf_token"]) == ("nina", "token", None)
    status, audit, _ = call(f"{stack.api}/api/auth/audit", headers=bearer(stack.tokens["ada"]))
    actions = [(a["username"], a["action"], a["target"]) for a in audit["audit"]]
    assert ("ada", "user_created", "nina") in actions and ("ada", "token_created", "nina") in actions
    assert call(f"{stack.api}/api/auth/audit", headers=bearer(stack.tokens["otto"]))[0] == 403


def test_an_oversized_body_is_refused(stack: Stack) -> None:
    status, body, _ = call(f"{stack.api}/api/smap/alerts/{stack.alert_ids['SAT-002']}/ack", "POST",
                           raw=json.dumps({"note": "n" * 70_000}).encode(), headers=bearer(stack.tokens["otto"]))
    assert status == 413 and body["status"] == 413


def test_the_websocket_needs_a_user_and_this_origin(stack: Stack) -> None:
    ws_url = f"{stack.api}/ws/smap?satellite_id=SAT-001"
    sid, _ = stack.login("vera")

    async def attempt(headers: dict[str, str]) -> int | dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(ws_url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                                              ) as ws:
                    first: dict[str, Any] = await ws.receive_json(timeout=10)
                    return first
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    host = stack.api.removeprefix("http://")
    assert asyncio.run(attempt({})) == 401
    assert asyncio.run(attempt(bearer(stack.tokens["feed"]))) == 403
    assert asyncio.run(attempt({"Cookie": f"smap_session={sid}", "Origin": "http://evil.example"})) == 403
    for headers in (bearer(stack.tokens["vera"]), {"Cookie": f"smap_session={sid}", "Origin": f"http://{host}"}):
        got = asyncio.run(attempt(headers))
        assert isinstance(got, dict) and got["type"] == "subscribed" and got["satellite_id"] == "SAT-001"


def test_auth_off_is_refused_beyond_loopback(tmp_path: Path) -> None:
    env = {**os.environ, "SMAP_AUTH": "off", "OPERATION_HOST": "0.0.0.0", "OPERATION_PORT": str(free_port()),
           "METRICS_PORT": str(free_port()), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "smap-operation-server/main.py"], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "SMAP_AUTH=off on 0.0.0.0" in out.stderr


def test_the_first_admin_is_created_once_with_a_private_random_password(tmp_path: Path) -> None:
    """start-smap.sh's step: `bootstrap` makes user admin when no user exists, its password in a 0600 file."""
    with throwaway_database() as db:
        path = tmp_path / "run" / "admin-password"
        assert "created the first admin" in cli(db, "bootstrap", "--password-file", str(path))
        assert path.stat().st_mode & 0o777 == 0o600
        password = path.read_text().strip()
        assert len(password) >= 20
        [(role, stored)] = query(db, "SELECT role, password_hash FROM users WHERE username = 'admin'")
        assert role == "admin" and verify_secret(password, stored) and password not in stored
        path.unlink()
        assert cli(db, "bootstrap", "--password-file", str(path)) == ""  # users exist: nothing changes
        assert not path.exists() and query(db, "SELECT count(*) FROM users") == [(1,)]


def test_an_operator_logs_in_on_the_page_and_acknowledges_in_chromium(stack: Stack) -> None:
    """Debian's Chromium (Playwright, nothing downloaded): the page shows its login, refuses a wrong password,
    logs the operator in, says who is acting, and the Acknowledge button records that user from the session."""
    alert = stack.alert_ids["SAT-001"]
    with chromium_page() as (page, errors):
        page.goto(stack.api + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#login-user", "otto")
        page.fill("#login-password", "not-the-password")
        page.click("#login-submit")
        page.wait_for_function("document.querySelector('#login-error').textContent.includes('wrong')")
        page.fill("#login-password", PASSWORDS["otto"])
        page.click("#login-submit")
        page.wait_for_selector("#login", state="hidden")
        assert page.text_content("#user") == "otto (operator)"
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["smap_session"]["httpOnly"] and cookies["smap_session"]["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # the page's script cannot read the session
        card = f'#alerts li[data-alert-id="{alert}"]'
        page.wait_for_selector(f"{card} button.ack")
        page.click(f"{card} button.ack")
        page.wait_for_function(f"!document.querySelector('{card} button.ack')")
    assert errors == []
    assert query(stack.db, "SELECT by_whom, user_id, auth_method FROM alert_acknowledgements WHERE alert_id = %s",
                 (alert,)) == [("otto", stack.user_ids["otto"], "session")]


def test_verdicts_are_attributed_and_export_as_telemanom_labels(stack: Stack) -> None:
    alert = stack.alert_ids["SAT-002"]
    url = f"{stack.api}/api/smap/alerts/{alert}/verdict"
    assert call(url, "POST", {"verdict": "true_anomaly"})[0] == 401
    assert call(url, "POST", {"verdict": "true_anomaly"}, bearer(stack.tokens["vera"]))[0] == 403
    status, body, _ = call(url, "POST", {"verdict": "maybe"}, bearer(stack.tokens["otto"]))
    assert status == 400 and "true_anomaly" in body["error"]
    assert call(url, "POST", {"verdict": "false_alarm", "by": "x"}, bearer(stack.tokens["otto"]))[0] == 400
    assert call(f"{stack.api}/api/smap/alerts/999999/verdict", "POST", {"verdict": "false_alarm"},
                bearer(stack.tokens["otto"]))[0] == 404
    status, judged, _ = call(url, "POST", {"verdict": "false_alarm", "comment": "a manoeuvre"},
                             bearer(stack.tokens["otto"]))
    assert status == 200 and judged["verdict"] == "false_alarm"
    status, judged, _ = call(url, "POST", {"verdict": "true_anomaly", "comment": "confirmed by ops"},
                             bearer(stack.tokens["ada"]))
    assert status == 200 and judged["verdict"] == "true_anomaly"
    assert [(v["verdict"], v["by"], v["auth"]) for v in judged["verdicts"]] == [
        ("false_alarm", "otto", "token"), ("true_anomaly", "ada", "token")]
    # a false alarm on another satellite is not a label
    other = f"{stack.api}/api/smap/alerts/{stack.alert_ids['SAT-003']}/verdict"
    assert call(other, "POST", {"verdict": "false_alarm"}, bearer(stack.tokens["otto"]))[0] == 200
    req = urllib.request.Request(f"{stack.api}/api/smap/verdicts/labeled_anomalies.csv",
                                 headers=bearer(stack.tokens["vera"]))
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/csv")
        text = resp.read().decode()
    [(first, last)] = query(stack.db, "SELECT first_index, max(t.frame_index) FROM alerts a"
                            " JOIN alert_transitions t ON t.alert_id = a.id WHERE a.id = %s GROUP BY first_index",
                            (alert,))
    assert text.splitlines() == ["chan_id,spacecraft,anomaly_sequences,class,num_values",
                                 f'A-1,SAT-002,"[[{first}, {last}]]",[operator_verdict],']
    # the project's own label loader reads it (the evaluation CLI's labels)
    labelled = parse_labelled(csv.DictReader(io.StringIO(text)))
    assert labelled == {"A-1": ("SAT-002", [Interval(first, last)])}
    assert (first, last) == (2, 4)  # pending at the first hot frame (2), firing at the third (4), still open


def test_shelving_needs_an_operator_and_is_attributed_from_the_token(stack: Stack) -> None:
    alert = stack.alert_ids["SAT-003"]
    body = {"duration_s": 600, "reason": "thermal test"}
    for base in (stack.api, stack.alerts_api):
        url = f"{base}/api/smap/alerts/{alert}/shelve"
        assert call(url, "POST", body)[0] == 401
        assert call(url, "POST", body, bearer(stack.tokens["vera"]))[0] == 403
        assert call(f"{base}/api/smap/shelves", "POST", {**body, "scope": "rule", "target": "anomaly-3-frames"},
                    bearer(stack.tokens["feed"]))[0] == 403
    status, shelf, _ = call(f"{stack.api}/api/smap/alerts/{alert}/shelve", "POST", body,
                            bearer(stack.tokens["otto"]))
    assert status == 201 and shelf["by"] == "otto" and shelf["auth"] == "token"
    # a viewer sees it; only an operator ends it
    status, listed, _ = call(f"{stack.api}/api/smap/shelves?active=true", headers=bearer(stack.tokens["vera"]))
    assert status == 200 and [s["id"] for s in listed["shelves"]] == [shelf["id"]]
    unshelve = f"{stack.api}/api/smap/shelves/{shelf['id']}/unshelve"
    assert call(unshelve, "POST", {}, bearer(stack.tokens["vera"]))[0] == 403
    status, ended, _ = call(unshelve, "POST", {"reason": "done"}, bearer(stack.tokens["ada"]))
    assert status == 200 and ended["ended_by"] == "ada" and not ended["active"]
    assert query(stack.db, "SELECT by_whom, user_id, auth_method, ended_by, end_reason FROM shelves WHERE id = %s",
                 (shelf["id"],)) == [("otto", stack.user_ids["otto"], "token", "ada", "done")]
    assert query(stack.db, "SELECT username, user_id, method, action FROM audit_log WHERE action LIKE '%%shelved'"
                           " ORDER BY id") == [("otto", stack.user_ids["otto"], "token", "shelved"),
                                               ("ada", stack.user_ids["ada"], "token", "unshelved")]


def test_an_operator_shelves_judges_and_unshelves_on_the_page_in_chromium(stack: Stack) -> None:
    alert = stack.alert_ids["SAT-001"]
    card = f'#alerts li[data-alert-id="{alert}"]'
    with chromium_page() as (page, errors):
        for user, operates in (("vera", False), ("otto", True)):
            page.goto(stack.api + "/")
            if user == "otto":  # log vera out first
                page.click("#logout")
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#login-user", user)
            page.fill("#login-password", PASSWORDS[user])
            page.click("#login-submit")
            page.wait_for_selector(card)
            # a viewer is offered no action it may not take
            assert (page.locator(f"{card} details.actions").count() == 1) is operates
        page.click(f"{card} details.actions summary")
        page.select_option(f"{card} .shelve-for", "900")
        page.click(f"{card} button.shelve")  # no reason: refused on the page, nothing sent
        page.wait_for_function("document.querySelector('#alerts-status').textContent.includes('reason')")
        page.fill(f"{card} .shelve-reason", "star tracker recalibration")
        page.click(f"{card} button.shelve")
        page.wait_for_selector(f"{card}.shelved")
        text = page.locator(card).inner_text()
        assert "by otto: star tracker recalibration" in text and "shelved until" in text
        page.click(f"{card} details.actions summary")
        page.select_option(f"{card} .verdict-kind", "rare_nominal_event")
        page.fill(f"{card} .verdict-comment", "planned manoeuvre")
        page.click(f"{card} button.verdict")
        page.wait_for_function(f"document.querySelector('{card}').innerText"
                               ".includes('verdict: rare nominal event')")
        page.click(f"{card} details.actions summary")
        page.click(f"{card} button.unshelve")
        page.wait_for_selector(f"{card}:not(.shelved)")
        # the card says what tripped the alert, and its link opens the entity at that time
        text = page.locator(card).inner_text()
        assert "(frame 2): sensor_2 0.000 vs reconstruction 0.000" in text, text
        assert "detector signal 2.000 / threshold 1.000 = 2.00x" in text, text
        page.click(f"{card} a.at-time")
        page.wait_for_function("document.querySelector('#overview-title').textContent.includes('around')")
        assert page.evaluate("location.hash") == "#/SAT-001/A-1@1795856410"
        assert page.locator("#entity-view").is_visible()
    assert errors == []
    [(shelf_id, expires_in)] = query(
        stack.db, "SELECT id, extract(epoch FROM expires_at - created_at) FROM shelves WHERE target = %s"
                  " AND by_whom = 'otto' AND auth_method = 'session'", (str(alert),))
    assert float(expires_in) == 900
    assert query(stack.db, "SELECT ended_by FROM shelves WHERE id = %s", (shelf_id,)) == [("otto",)]
    assert query(stack.db, "SELECT verdict, comment, by_whom, auth_method FROM alert_verdicts WHERE alert_id = %s",
                 (alert,)) == [("rare_nominal_event", "planned manoeuvre", "otto", "session")]


def test_the_fleet_view_counts_open_alerts_as_the_caller_sees_them(stack: Stack) -> None:
    assert call(f"{stack.api}/api/smap/fleet")[0] == 401
    status, body, _ = call(f"{stack.api}/api/smap/fleet", headers=bearer(stack.tokens["vera"]))
    assert status == 200 and body["sources"]["alerts"] == "ok"
    a1 = next(r for sat in body["satellites"] if sat["id"] == "SAT-001" for r in sat["streams"]
              if r["entity"] == "A-1")
    # SAT-002/SAT-003 are not A-1's satellites in the packaged fleet: only SAT-001's alert is a fleet stream's
    assert a1["alerts"] == {"open": 1, "shelved": 0, "severity": "critical", "ids": [stack.alert_ids["SAT-001"]]}
    assert body["summary"]["open_alerts"] == 1  # the other two are on no stream of this fleet


def test_performance_counts_the_operators_verdicts(stack: Stack) -> None:
    url = f"{stack.api}/api/smap/performance?start=2026-11-28T08:00:00Z&end=2026-11-28T10:00:00Z"
    assert call(url)[0] == 401
    status, body, _ = call(url, headers=bearer(stack.tokens["vera"]))
    assert status == 200 and body["verdicts_source"] == "ok"
    # of the three judged alerts only SAT-001's is a fleet stream's (A-1 flies on SAT-001 in the packaged
    # fleet): judged a rare nominal event on the page, so no confirmed alarm
    assert body["entities"]["A-1"]["verdicts"] == {"true_anomaly": 0, "false_alarm": 0, "rare_nominal_event": 1,
                                                   "judged": 1, "alarm_precision": 0.0}
    assert body["fleet"]["frames"] == 0  # this stack's VictoriaMetrics holds no results


def test_password_guessing_is_throttled_before_any_password_is_checked(stack: Stack) -> None:
    assert call(f"{stack.api}/api/auth/users", "POST", {"username": "tess", "role": "viewer",
                                                         "password": "tess-password-1234"},
                bearer(stack.tokens["ada"]))[0] == 201
    login = f"{stack.api}/api/auth/login"
    for _ in range(5):
        assert call(login, "POST", {"username": "tess", "password": "guess"})[0] == 401
    # the sixth try from this address waits, even with the right password
    status, body, headers = call(login, "POST", {"username": "tess", "password": "tess-password-1234"})
    assert status == 429 and "too many failed logins" in body["error"] and 0 < int(headers["Retry-After"]) <= 900
    assert query(stack.db, "SELECT count(*) FROM audit_log WHERE action = 'login_failed' AND target = 'tess'"
                 ) == [(5,)]
    assert query(stack.db, "SELECT detail->>'address' FROM audit_log WHERE action = 'login_throttled'"
                 ) == [("127.0.0.1",)]
    # other users from the same address are not locked out by it
    assert call(login, "POST", {"username": "otto", "password": PASSWORDS["otto"]})[0] == 200
