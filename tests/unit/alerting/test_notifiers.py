"""Rendering of notifications, the outbox backoff, and the API's parameter checks (no services needed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from multidict import MultiDict
from test_engine import result, rule

from smap_shared.alerting.api import MAX_LIMIT, parse_ack, parse_filters
from smap_shared.alerting.engine import Engine, Transition
from smap_shared.alerting.notifiers import Renderer
from smap_shared.alerting.outbox import backoff_s
from smap_shared.settings import AlertManagerSettings


def firing(**kw: Any) -> Transition:
    engine, states = Engine([rule(channels=["slack", "email"], **kw)]), {}  # type: ignore[var-annotated]
    frames = [result(i, True, score=0.42, errors=[0.1, 0.9, 0.5], alarm_cause=4) for i in range(3)]
    out = [t for f in frames for t in engine.evaluate(f, states)]
    assert out[-1].to_state == "firing"
    return out[-1]


def settings(**kw: Any) -> AlertManagerSettings:
    base = {"slack_webhook_url": "http://hook.example/x", "smtp_host": "mail.example",
            "alert_email_to": "a@example.org, b@example.org"}
    return AlertManagerSettings.model_validate({**base, **kw})


def test_both_channels_render_the_alert_with_its_top_sensors_and_a_stable_id() -> None:
    nid = uuid.uuid4()
    out = dict(Renderer(settings()).render(firing(), 7, nid))
    slack, email = out["slack"], out["email"]
    assert "SAT-001/A-1" in slack["text"] and "alert #7" in slack["text"] and "CRITICAL" in slack["text"]
    section = slack["blocks"][1]["text"]["text"]
    assert "sensor_1=0.9, sensor_2=0.5, sensor_0=0.1" in section and "0.42" in section
    assert slack["notification_id"] == str(uuid.uuid5(nid, "slack")) and slack["alert_id"] == 7
    assert email["to"] == ["a@example.org", "b@example.org"]
    assert email["notification_id"] == str(uuid.uuid5(nid, "email")) != slack["notification_id"]
    assert "sensor_1=0.9" in email["body"] and email["subject"].startswith("SMAP alert: [CRITICAL]")
    why = "Why the detector alarmed: value_step"
    assert why in section and why in email["body"]


def test_the_notification_says_what_tripped_it_and_links_the_dashboard_at_that_time() -> None:
    engine, states = Engine([rule(channels=["slack", "email"])]), {}  # type: ignore[var-annotated]
    frames = [result(i, True, score=0.42, errors=[0.1, 0.9, 0.5], detector_signal=0.03 if i == 0 else 0.2,
                     alarm_cause=4) for i in range(3)]
    [*_, fired] = [t for f in frames for t in engine.evaluate(f, states)]
    out = dict(Renderer(settings(alert_dashboard_url="https://ops.example/smap/")).render(fired, 7, uuid.uuid4()))
    opened = int(result(0, True).timestamp.timestamp())
    for text in (out["slack"]["blocks"][1]["text"]["text"], out["email"]["body"]):
        tripped = "Tripped at frame 0 (2026-11-28T09:00:00+00:00): sensor_1 = 0 vs reconstruction 0 (error 0.9)"
        assert tripped in text
        # the step alarm fired under the detector's threshold: the text says so and names the cause
        assert "Crossed: detector signal 0.03 <= threshold 1 (0.03x); the alarm came from: value_step" in text
        assert f"Dashboard: https://ops.example/smap/#/SAT-001/A-1@{opened}" in text


def test_unconfigured_channels_are_skipped() -> None:
    assert [c for c, _ in Renderer(settings(smtp_host="")).render(firing(), 1, uuid.uuid4())] == ["slack"]
    assert [c for c, _ in Renderer(settings(alert_email_to="")).render(firing(), 1, uuid.uuid4())] == ["slack"]
    assert Renderer(settings(slack_webhook_url="", smtp_host="")).render(firing(), 1, uuid.uuid4()) == []
    assert Renderer(settings()).configured() == {"slack", "email"}


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(a, 1.0, 10.0) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_list_filters_are_checked() -> None:
    filters, limit = parse_filters(MultiDict({"state": "firing", "entity": "A-1", "acknowledged": "false"}))
    assert filters == {"state": "firing", "entity": "A-1", "acknowledged": False} and limit == 100
    for bad in ({"state": "on"}, {"severity": "huge"}, {"acknowledged": "maybe"}, {"limit": "x"},
                {"limit": "0"}, {"limit": str(MAX_LIMIT + 1)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            parse_filters(MultiDict(bad))


def test_acknowledgement_body_is_checked() -> None:
    assert parse_ack({"note": "n"}) == "n"
    assert parse_ack({}) == ""
    bad: object
    for bad in ([], {"note": 5}, {"note": "n" * 2001}):
        with pytest.raises(ValueError, match=r"note|object"):
            parse_ack(bad)
    # the acknowledger is the authenticated caller: a body naming someone is refused, not silently overridden
    with pytest.raises(ValueError, match='"by" is not accepted'):
        parse_ack({"by": "someone else", "note": "n"})
