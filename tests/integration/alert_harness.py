"""What the alerting integration tests share: a throwaway PostgreSQL database, a private Tansu broker, a
local webhook receiver and SMTP server on free ports, and smap-alert-manager as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from smap_shared.alerting.store import drop_database, ensure_database
from smap_shared.infra.chain import spawn, tansu_command
from smap_shared.infra.ports import free_port, wait_port
from smap_shared.schemas import InferenceResult

PG_SERVER = os.environ.get("SMAP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    url = f"{PG_SERVER}/smap_alerts_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_database(url))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


@contextlib.contextmanager
def tansu(logs: Path) -> Iterator[str]:
    port = free_port()
    proc = spawn(tansu_command(port), logs / "tansu.log")
    try:
        assert wait_port(port, timeout=30), "tansu did not open its port"
        yield f"localhost:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ---------------------------------------------------------------- webhook receiver


@dataclass
class WebhookReceiver:
    """A Slack-compatible incoming webhook on a free port: answers `status` (settable at any time) and
    records every POST with the status it answered."""

    status: int = 200
    posts: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)  # (answered, body, header id)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/smap"

    def delivered(self) -> list[dict[str, Any]]:
        return [body for status, body, _ in self.posts if 200 <= status < 300]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.status
        self.posts.append((status, body, request.headers.get("X-SMAP-Notification-Id", "")))
        return web.Response(status=status, text="ok" if status == 200 else "unavailable")

    @contextlib.contextmanager
    def running(self) -> Iterator[WebhookReceiver]:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        runner_box: list[web.AppRunner] = []

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hooks/smap", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            runner_box.append(runner)
            ready.set()

        thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()),
                                  daemon=True)
        thread.start()
        assert ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


class _MailHandler:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert isinstance(envelope.content, bytes)
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[int, list[EmailMessage]]]:
    handler = _MailHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, handler.messages
    finally:
        controller.stop()


# ---------------------------------------------------------------- the service


@dataclass
class AlertManager:
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    api_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    def start(self) -> None:
        env = {**self.env, "ALERT_API_HOST": "127.0.0.1", "ALERT_API_PORT": str(self.api_port),
               "METRICS_PORT": str(self.metrics_port)}
        self.proc = spawn([sys.executable, "smap-alert-manager/main.py"], self.logs / "alert-manager.log", env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"alert manager exited {self.proc.returncode}; see {self.logs}"
            with contextlib.suppress(OSError):
                if self.get("/healthz")[0] == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"alert manager API not up; see {self.logs}")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return None
        finally:
            self.proc = None

    def _call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metric(self, name: str) -> float:
        """A sample of the process's /metrics, e.g. 'smap_alert_results_total{outcome="applied"}'."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
        raise KeyError(name)

    def get(self, path: str) -> tuple[int, Any]:
        return self._call("GET", path)

    def post(self, path: str, body: object) -> tuple[int, Any]:
        return self._call("POST", path, body)


def alert_env(bootstrap: str, db_url: str, hook: WebhookReceiver, smtp_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "SMTP_", "SLACK_", "KAFKA_"))}
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "ALERT_DATABASE_URL": db_url, "SLACK_WEBHOOK_URL": hook.url,
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "ALERT_EMAIL_TO": "ops@example.org",
        "ALERT_DELIVERY_BACKOFF_S": "0.2", "ALERT_DELIVERY_BACKOFF_MAX_S": "1", "ALERT_DELIVERY_TIMEOUT_S": "5",
        "LOG_LEVEL": "INFO",
        # the hand-made results carry fixed 2026-11-28T09:00Z timestamps: let frames of any age notify
        "ALERT_NOTIFY_MAX_AGE_S": "0",
    })
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], object], timeout: float, what: str, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"; logs in {logs}" if logs else ""))


# ---------------------------------------------------------------- hand-made results


T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def make_result(satellite: str, entity: str, index: int, detected: bool, n: int = 3) -> bytes:
    errors = {f"sensor_{k}": (0.1 + k * 0.2 + (2.0 if detected else 0.0)) for k in range(n)}
    zeros = {f"sensor_{k}": 0.0 for k in range(n)}
    r = InferenceResult(
        stream_id=f"{satellite}/{entity}", satellite_id=satellite, entity=entity, model_name=f"smap_{entity}",
        timestamp=T0 + timedelta(seconds=5 * index), index=index, sensor_values=zeros, reconstruction=zeros,
        sensor_error=errors, anomaly_score=sum(errors.values()) / n, anomaly_detected=detected, threshold=1.0,
        detector_signal=2.0 if detected else 0.5, inference_time_ms=1.0)
    return r.model_dump_json().encode()
