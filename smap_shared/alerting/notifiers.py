"""Notification channels: a Slack-compatible incoming webhook (JSON over HTTP) and email over SMTP.

Messages are rendered when the firing is recorded (the outbox stores the rendered payload), so every
delivery attempt sends the same bytes. Each carries a stable notification id -- the webhook's
`X-SMAP-Notification-Id` header and `notification_id` field, the email's Message-ID -- so a receiver can
drop the rare duplicate left by a crash between a successful send and its record (see outbox.py).
"""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import aiohttp

from smap_shared.alerting.engine import Transition
from smap_shared.schemas import TripEvidence
from smap_shared.settings import AlertManagerSettings

NOTIFICATION_HEADER = "X-SMAP-Notification-Id"
SEVERITY_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str
    permanent: bool = False  # a failure retrying cannot fix (e.g. HTTP 400, recipient refused)


CROSSED = {"detector_signal": "detector signal", "anomaly_score": "anomaly score",
           "sensor_error": "reconstruction error"}


def dashboard_link(base_url: str, satellite_id: str, entity: str, at: datetime) -> str:
    """The dashboard's entity view around `at` (its #/SAT/ENTITY@unix route).

    >>> from datetime import UTC
    >>> dashboard_link("http://ops:8000/", "SAT-001", "A-1", datetime(2026, 12, 1, tzinfo=UTC))
    'http://ops:8000/#/SAT-001/A-1@1796083200'
    """
    return f"{base_url.rstrip('/')}/#/{quote(satellite_id)}/{quote(entity)}@{int(at.timestamp())}"


def evidence_lines(e: TripEvidence) -> list[str]:
    """What tripped the alert, in words (notifications; the page writes the same from the alert's JSON).

    >>> from datetime import UTC
    >>> from smap_shared.schemas import Crossing
    >>> e = TripEvidence(index=4692, at=datetime(2026, 12, 1, tzinfo=UTC), sensor="sensor_0", value=0.99,
    ...                  reconstruction=0.42, error=0.325, anomaly_score=0.02,
    ...                  crossing=Crossing(what="detector_signal", value=0.09, threshold=0.04),
    ...                  alarm_causes=["error_above_threshold"])
    >>> for line in evidence_lines(e): print(line)
    Tripped at frame 4692 (2026-12-01T00:00:00+00:00): sensor_0 = 0.99 vs reconstruction 0.42 (error 0.325)
    Crossed: detector signal 0.09 > threshold 0.04 (2.25x)
    """
    lines = [f"Tripped at frame {e.index} ({e.at.isoformat()}): {e.sensor} = {e.value:.4g} vs reconstruction "
             f"{e.reconstruction:.4g} (error {e.error:.3g})"]
    c = e.crossing
    if c is not None:
        ratio = c.ratio
        over = ">" if c.value > c.threshold else "<="
        lines.append(f"Crossed: {CROSSED[c.what]} {c.value:.4g} {over} threshold {c.threshold:.4g}"
                     + (f" ({ratio:.2f}x)" if ratio is not None else "")
                     + ("" if c.value > c.threshold else "; the alarm came from: " + ", ".join(e.alarm_causes)))
    return lines


def _summary(t: Transition, alert_id: int, dashboard_url: str) -> tuple[str, list[str]]:
    where = t.stream_id + (f" {t.sensor}" if t.sensor else "")
    title = f"[{t.rule.severity.upper()}] {t.rule.name} {t.to_state} on {where} (alert #{alert_id})"
    lines = [
        f"Rule: {t.rule.name}" + (f" -- {t.rule.description}" if t.rule.description else ""),
        f"Stream: {t.stream_id} (satellite {t.satellite_id}, entity {t.entity})"
        + (f", sensor {t.sensor}" if t.sensor else ""),
        f"State: {t.to_state} at {t.at.isoformat()} (frame {t.index}); condition since {t.started_at.isoformat()}",
        f"Anomaly score: {t.score:.6g}",
        "Top sensors (reconstruction error): "
        + ", ".join(f"{s.id}={s.error:.4g}" for s in t.top_sensors),
    ]
    if t.alarm_causes:
        lines.append("Why the detector alarmed: " + ", ".join(t.alarm_causes))
    if t.evidence is not None:
        lines += evidence_lines(t.evidence)
    lines.append("Dashboard: " + dashboard_link(dashboard_url, t.satellite_id, t.entity,
                                                t.evidence.at if t.evidence is not None else t.started_at))
    return title, lines


class Renderer:
    """Turns a notified transition into one payload per configured channel the rule names."""

    def __init__(self, settings: AlertManagerSettings) -> None:
        self.settings = settings
        self.recipients = [a.strip() for a in settings.alert_email_to.split(",") if a.strip()]

    def configured(self) -> set[str]:
        out = set()
        if self.settings.slack_webhook_url:
            out.add("slack")
        if self.settings.smtp_host and self.recipients:
            out.add("email")
        return out

    def render(self, transition: Transition, alert_id: int, notification_id: uuid.UUID
               ) -> list[tuple[str, dict[str, Any]]]:
        title, lines = _summary(transition, alert_id, self.settings.alert_dashboard_url)
        out: list[tuple[str, dict[str, Any]]] = []
        configured = self.configured()
        for channel in transition.rule.channels:
            if channel not in configured:
                continue
            nid = str(uuid.uuid5(notification_id, channel))
            if channel == "slack":
                emoji = SEVERITY_EMOJI[transition.rule.severity]
                out.append((channel, {
                    "text": f"{emoji} {title}",
                    "blocks": [
                        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
                        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"notification {nid}"}]},
                    ],
                    "notification_id": nid, "alert_id": alert_id,
                }))
            else:
                out.append((channel, {
                    "subject": f"SMAP alert: {title}", "body": "\n".join([*lines, "", f"Notification {nid}"]),
                    "from": self.settings.alert_email_from, "to": self.recipients, "notification_id": nid,
                }))
        return out


class Notifiers:
    """Sends one outbox payload on its channel; never raises for a delivery failure."""

    def __init__(self, settings: AlertManagerSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    async def send(self, channel: str, payload: dict[str, Any]) -> SendResult:
        try:
            if channel == "slack":
                return await self._slack(payload)
            if channel == "email":
                return await asyncio.to_thread(self._email, payload)
            return SendResult(False, f"unknown channel {channel!r}", permanent=True)
        except (aiohttp.ClientError, OSError, TimeoutError, smtplib.SMTPException) as exc:
            return SendResult(False, f"{type(exc).__name__}: {exc}"[:500])

    async def _slack(self, payload: dict[str, Any]) -> SendResult:
        url = self.settings.slack_webhook_url
        if not url:
            return SendResult(False, "SLACK_WEBHOOK_URL is not set", permanent=True)
        timeout = aiohttp.ClientTimeout(total=self.settings.alert_delivery_timeout_s)
        headers = {NOTIFICATION_HEADER: str(payload.get("notification_id", ""))}
        async with self.session.post(url, json=payload, headers=headers, timeout=timeout) as resp:
            text = (await resp.text())[:200]
            if 200 <= resp.status < 300:
                return SendResult(True, f"HTTP {resp.status}")
            # a malformed payload or a revoked webhook will not heal by retrying; 408/429 and 5xx may
            permanent = 400 <= resp.status < 500 and resp.status not in (408, 425, 429)
            return SendResult(False, f"HTTP {resp.status}: {text}", permanent=permanent)

    def _email(self, payload: dict[str, Any]) -> SendResult:
        s = self.settings
        if not s.smtp_host:
            return SendResult(False, "SMTP_HOST is not set", permanent=True)
        msg = EmailMessage()
        msg["Subject"] = payload["subject"]
        msg["From"] = payload["from"]
        msg["To"] = ", ".join(payload["to"])
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = f"<{payload['notification_id']}@smap-alert-manager>"
        msg[NOTIFICATION_HEADER] = payload["notification_id"]
        msg.set_content(payload["body"])
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.alert_delivery_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            return SendResult(False, f"recipients refused: {exc.recipients}"[:500], permanent=True)
        except smtplib.SMTPResponseException as exc:
            return SendResult(False, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:500],
                              permanent=500 <= exc.smtp_code < 600)
        if refused:
            return SendResult(True, f"accepted; refused {sorted(refused)}")
        return SendResult(True, "SMTP accepted")
