"""smap-alert-manager on the real broker (Tansu) and the real PostgreSQL, with results produced directly to
the results topic: exactly-once notification across a SIGKILL, a dead webhook that recovers while the
stream keeps flowing, the history API, and rules rejected at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

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
from kafka_io import produce, read_topic

from smap_shared.infra.chain import REPO_ROOT
from smap_shared.schemas import AlertEvent

pytestmark = pytest.mark.integration

TOPIC = "smap-inference-results"


@dataclass
class Rig:
    bootstrap: str
    db: str
    hook: WebhookReceiver
    mails: list[EmailMessage]
    manager: AlertManager
    logs: Path

    def produce(self, records: list[tuple[str, str, int, bool]]) -> None:
        asyncio.run(produce(self.bootstrap, TOPIC, [
            (f"{s}/{e}".encode(), make_result(s, e, i, d)) for s, e, i, d in records]))

    def stored_offsets(self) -> int:
        return sum(o for (o,) in query(self.db, "SELECT next_offset FROM consumer_offsets"))

    def outbox(self, channel: str) -> list[tuple[str, int]]:
        return query(self.db, "SELECT status, attempts FROM notification_outbox WHERE channel = %s ORDER BY id",
                     (channel,))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with throwaway_database() as db, tansu(tmp_path) as bootstrap, WebhookReceiver(status=500).running() as hook, \
            smtp_server() as (smtp_port, mails):
        manager = AlertManager(alert_env(bootstrap, db, hook, smtp_port), tmp_path)
        try:
            yield Rig(bootstrap, db, hook, mails, manager, tmp_path)
        finally:
            manager.stop()


def anomaly(entity: str, start: int, n: int, hot: range) -> list[tuple[str, str, int, bool]]:
    return [("SAT-001", entity, i, i in hot) for i in range(start, start + n)]


def test_sigkill_between_firing_and_delivery_delivers_exactly_once(rig: Rig) -> None:
    rig.manager.start()
    rig.produce(anomaly("A-1", 0, 10, range(2, 8)))  # fires at index 4
    # the webhook answers 500: the firing is recorded, its Slack notification waits in the outbox
    wait_until(lambda: rig.outbox("slack") and rig.outbox("slack")[0][1] >= 2, 60, "failed webhook attempts",
               rig.logs)
    wait_until(lambda: len(rig.mails) == 1, 30, "the email", rig.logs)
    assert rig.outbox("slack")[0][0] == "pending" and rig.hook.delivered() == []
    rig.manager.kill()  # SIGKILL: between firing and delivery
    rig.hook.status = 200
    rig.produce(anomaly("A-1", 10, 10, range(0)))  # resolves the alert after the restart
    rig.manager.start()
    wait_until(lambda: rig.outbox("slack")[0][0] == "delivered" and rig.stored_offsets() == 20, 60,
               "delivery after the restart", rig.logs)
    wait_until(lambda: query(rig.db, "SELECT state FROM alerts") == [("resolved",)], 30, "the resolution")
    # the restarted process started from the offsets stored in PostgreSQL: it read the 10 new results only
    assert rig.manager.metric('smap_alert_results_total{outcome="applied"}') == 10
    # exactly one notification per channel, and nothing was applied twice
    assert len(rig.hook.delivered()) == 1
    assert len(rig.mails) == 1
    body = rig.hook.delivered()[0]
    assert body["alert_id"] == 1 and "firing on SAT-001/A-1" in body["text"]
    # it explains itself: the opening frame (index 2, T0 + 10 s), what was crossed, a link to that time
    section = body["blocks"][1]["text"]["text"]
    tripped = "Tripped at frame 2 (2026-11-28T09:00:10+00:00): sensor_2 = 0 vs reconstruction 0 (error 2.5)"
    assert tripped in section
    assert "Crossed: detector signal 2 > threshold 1 (2.00x)" in section
    assert "Dashboard: http://localhost:8000/#/SAT-001/A-1@1795856410" in section
    evidence = rig.manager.get("/api/smap/alerts/1")[1]["evidence"]
    assert evidence["index"] == 2 and evidence["sensor"] == "sensor_2" and evidence["crossing"] == {
        "what": "detector_signal", "value": 2.0, "threshold": 1.0}
    assert rig.hook.posts[-1][2] == body["notification_id"]  # the X-SMAP-Notification-Id header
    mail_id = rig.mails[0]["Message-ID"]
    ids = dict(query(rig.db, "SELECT channel, notification_id::text FROM notification_outbox"))
    assert mail_id == f"<{ids['email']}@smap-alert-manager>" and body["notification_id"] == ids["slack"]
    assert query(rig.db, "SELECT count(*) FROM alerts") == [(1,)]
    transitions = query(rig.db, "SELECT from_state, to_state, frame_index FROM alert_transitions ORDER BY id")
    assert transitions == [(None, "pending", 2), ("pending", "firing", 4), ("firing", "resolved", 12)]
    log = query(rig.db, "SELECT ok FROM delivery_log WHERE channel = 'slack' ORDER BY id")
    assert log[-1] == (True,) and all(not ok for (ok,) in log[:-1]) and len(log) >= 3
    assert rig.manager.stop() == 0  # SIGTERM: a clean exit


def test_dead_webhook_is_retried_until_it_recovers_while_the_stream_flows(rig: Rig) -> None:
    rig.manager.start()
    rig.produce(anomaly("A-1", 0, 8, range(0, 8)))
    wait_until(lambda: rig.outbox("slack") and rig.outbox("slack")[0][1] >= 2, 60, "failed attempts", rig.logs)
    before = rig.stored_offsets()
    # meanwhile 300 more results of other streams are consumed and recorded, with a second alert
    rig.produce([("SAT-002", "D-1", i, 5 <= i < 300) for i in range(300)])
    wait_until(lambda: rig.stored_offsets() == before + 300, 60, "the stream to be consumed", rig.logs)
    assert rig.outbox("slack")[0][0] == "pending" and rig.hook.delivered() == []
    assert query(rig.db, "SELECT count(*) FROM alerts WHERE state = 'firing'") == [(2,)]
    rig.hook.status = 200
    wait_until(lambda: [s for s, _ in rig.outbox("slack")] == ["delivered", "delivered"], 30, "recovery")
    assert sorted(b["alert_id"] for b in rig.hook.delivered()) == [1, 2]
    failed = [p for p in rig.hook.posts if p[0] == 500]
    assert len(failed) >= 2 and {p[2] for p in failed} <= {p[2] for p in rig.hook.posts if p[0] == 200}

    # the history API: filters, one alert with its transitions and deliveries, acknowledgement
    status, listing = rig.manager.get("/api/smap/alerts?state=firing&satellite_id=SAT-002")
    assert status == 200 and [a["entity"] for a in listing["alerts"]] == ["D-1"]
    d1 = listing["alerts"][0]
    assert d1["severity"] == "critical" and d1["rule"] == "anomaly-3-frames" and d1["stream_id"] == "SAT-002/D-1"
    assert [s["id"] for s in d1["top_sensors"]] == ["sensor_2", "sensor_1", "sensor_0"]
    assert d1["score_at_firing"] == pytest.approx((2.1 + 2.3 + 2.5) / 3)
    status, one = rig.manager.get(f"/api/smap/alerts/{d1['id']}")
    assert status == 200 and [(t["from"], t["to"]) for t in one["transitions"]] == [
        (None, "pending"), ("pending", "firing")]
    assert [(d["channel"], d["status"]) for d in one["deliveries"]] == [
        ("slack", "delivered"), ("email", "delivered")]
    status, acked = rig.manager.post(f"/api/smap/alerts/{d1['id']}/ack", {"note": "looking"})
    # SMAP_AUTH=off (tests/conftest.py): the acknowledger is the local developer; test_auth.py has the users
    assert status == 200 and acked["acknowledged_by"] == "local-dev" and acked["acknowledged_at"]
    assert acked["acknowledgements"][0]["note"] == "looking"
    assert [a["id"] for a in rig.manager.get("/api/smap/alerts?acknowledged=true")[1]["alerts"]] == [d1["id"]]
    assert [a["entity"] for a in rig.manager.get("/api/smap/alerts?acknowledged=false")[1]["alerts"]] == ["A-1"]
    assert len(rig.manager.get("/api/smap/alerts?limit=1")[1]["alerts"]) == 1
    assert rig.manager.get("/api/smap/alerts?severity=info")[1]["alerts"] == []
    assert rig.manager.get("/api/smap/alerts/999")[0] == 404
    assert rig.manager.get("/api/smap/alerts/abc")[0] == 400
    assert rig.manager.get("/api/smap/alerts?state=burning")[0] == 400
    assert rig.manager.get("/api/smap/alerts?limit=0")[0] == 400
    assert rig.manager.post(f"/api/smap/alerts/{d1['id']}/ack", {"by": "mallory", "note": "me"})[0] == 400
    assert rig.manager.post("/api/smap/alerts/999/ack", {"note": "x"})[0] == 404
    # a body over the cap is refused before it is read, and records nothing
    assert rig.manager.post(f"/api/smap/alerts/{d1['id']}/ack", {"note": "n" * 70_000})[0] == 413
    assert len(rig.manager.get(f"/api/smap/alerts/{d1['id']}")[1]["acknowledgements"]) == 1

    # every transition and the acknowledgement went out on the alerts topic, keyed by stream
    raw = asyncio.run(read_topic(rig.bootstrap, "smap-alerts", 5, 30))
    events = [AlertEvent.model_validate_json(r) for r in raw]
    assert sorted((e.entity, e.event) for e in events) == [
        ("A-1", "firing"), ("A-1", "pending"), ("D-1", "acknowledged"), ("D-1", "firing"), ("D-1", "pending")]
    ack_event = next(e for e in events if e.event == "acknowledged")
    assert ack_event.acknowledged and ack_event.alert_id == d1["id"] and ack_event.state == "firing"


def test_invalid_rules_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[[rule]]\nname = 'r'\nseverity = 'urgent'\n"
                   "[rule.condition]\nkind = 'consecutive'\nframes = 3\n")
    env = {**os.environ, "ALERT_RULES_FILE": str(bad)}
    proc = subprocess.run([sys.executable, "smap-alert-manager/main.py"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert f"alert rules {bad} rejected" in proc.stderr and "rule #1 ('r').severity" in proc.stderr


def test_a_recreated_results_topic_is_read_from_its_start(tmp_path: Path) -> None:
    """start-smap.sh restarts the in-memory broker (a new, empty results topic) while PostgreSQL keeps the
    offsets of the old one: the alert manager must read the new topic from its start, not wait at the old
    offset and skip what came before it."""
    with throwaway_database() as db, WebhookReceiver().running() as hook, smtp_server() as (smtp_port, _mails):
        for run, n in enumerate((30, 10)):
            with tansu(tmp_path) as bootstrap:
                # one stream (one partition): the new topic's end (10) lies below the stored offset (30)
                asyncio.run(produce(bootstrap, TOPIC, [
                    (b"SAT-001/A-1", make_result("SAT-001", "A-1", i, 2 <= i < 8)) for i in range(n)]))
                manager = AlertManager(alert_env(bootstrap, db, hook, smtp_port), tmp_path)
                manager.start()
                try:
                    def applied(n: int = n) -> bool:
                        return bool(sum(o for (o,) in query(db, "SELECT next_offset FROM consumer_offsets")) == n)

                    wait_until(applied, 60, f"run {run}: the {n} results applied", tmp_path)
                    assert manager.metric('smap_alert_results_total{outcome="applied"}') == n
                finally:
                    assert manager.stop() == 0
        # one alert per run: the second run's anomaly was seen, although its offsets lie below the stored ones
        assert query(db, "SELECT count(*) FROM alerts WHERE fired_at IS NOT NULL") == [(2,)]
        assert "the topic was recreated" in (tmp_path / "alert-manager.log").read_text()


def test_a_shelved_stream_is_recorded_not_notified_until_it_is_unshelved(rig: Rig) -> None:
    rig.hook.status = 200
    rig.manager.start()
    shelf_body = {"scope": "stream", "target": "SAT-001/A-1", "duration_s": 600, "reason": "safe mode"}
    status, shelf = rig.manager.post("/api/smap/shelves", shelf_body)
    assert status == 201 and shelf["active"] and shelf["by"] == "local-dev" and shelf["expires_at"]
    # what a shelf must name, and that forgetting the duration does not shelve forever
    for bad in ({**shelf_body, "target": "A-1"}, {**shelf_body, "scope": "satellite"},
                {k: v for k, v in shelf_body.items() if k != "duration_s"}, {**shelf_body, "duration_s": -5},
                {**shelf_body, "duration_s": 40 * 86400}, {**shelf_body, "reason": " "},
                {**shelf_body, "scope": "rule", "target": "no-such-rule"}, {**shelf_body, "by": "mallory"}):
        assert rig.manager.post("/api/smap/shelves", bad)[0] == 400, bad
    assert rig.manager.post("/api/smap/alerts/99/shelve", {"duration_s": 60, "reason": "x"})[0] == 404

    rig.produce(anomaly("A-1", 0, 10, range(2, 8)) + anomaly("D-1", 0, 10, range(2, 8)))
    wait_until(lambda: len(rig.hook.delivered()) == 1 and len(rig.mails) == 1, 60, "D-1's notifications",
               rig.logs)
    wait_until(lambda: rig.stored_offsets() == 20, 30, "every result applied", rig.logs)
    time.sleep(1.5)  # a few sweeps and delivery polls: the held rows must stay held
    ids = dict(query(rig.db, "SELECT entity, id FROM alerts"))
    assert [b["alert_id"] for b in rig.hook.delivered()] == [ids["D-1"]] and len(rig.mails) == 1
    a1 = rig.manager.get(f"/api/smap/alerts/{ids['A-1']}")[1]
    assert a1["entity"] == "A-1" and a1["state"] == "firing" and a1["shelved"] and a1["notification_held"]
    assert not a1["notified"] and a1["shelf"]["id"] == shelf["id"] and a1["shelf"]["reason"] == "safe mode"
    assert [(d["channel"], d["status"]) for d in a1["deliveries"]] == [("slack", "held"), ("email", "held")]
    assert "notification held: shelved" in a1["transitions"][-1]["message"]
    assert [a["id"] for a in rig.manager.get("/api/smap/alerts?shelved=true")[1]["alerts"]] == [ids["A-1"]]
    assert [a["id"] for a in rig.manager.get("/api/smap/alerts?shelved=false")[1]["alerts"]] == [ids["D-1"]]
    assert [s["id"] for s in rig.manager.get("/api/smap/shelves?active=true")[1]["shelves"]] == [shelf["id"]]

    status, ended = rig.manager.post(f"/api/smap/shelves/{shelf['id']}/unshelve", {"reason": "nominal again"})
    assert status == 200 and not ended["active"] and ended["ended_by"] == "local-dev"
    wait_until(lambda: len(rig.hook.delivered()) == 2 and len(rig.mails) == 2, 30, "the released notifications",
               rig.logs)
    assert rig.hook.delivered()[1]["alert_id"] == ids["A-1"]
    assert "firing on SAT-001/A-1" in rig.hook.delivered()[1]["text"]
    a1 = rig.manager.get(f"/api/smap/alerts/{ids['A-1']}")[1]
    assert a1["notified"] and not a1["shelved"] and not a1["notification_held"]
    assert rig.manager.post(f"/api/smap/shelves/{shelf['id']}/unshelve", {})[0] == 409
    assert rig.manager.get("/api/smap/shelves?active=true")[1]["shelves"] == []
    assert query(rig.db, "SELECT username, method, action, target FROM audit_log ORDER BY id") == [
        ("local-dev", "off", action, "stream:SAT-001/A-1") for action in ("shelved", "unshelved")]


def test_a_shelf_expires_on_its_own_and_a_firing_that_resolved_under_it_is_dropped(rig: Rig) -> None:
    rules = rig.logs / "rules.toml"
    rules.write_text('[[rule]]\nname = "anomaly-3-frames"\nseverity = "critical"\nchannels = ["slack"]\n'
                     'notify_resolved = true\nresolve_after_frames = 5\n'
                     '[rule.condition]\nkind = "consecutive"\nframes = 3\n')
    rig.manager.env["ALERT_RULES_FILE"] = str(rules)
    rig.hook.status = 200
    rig.manager.start()
    rig.produce(anomaly("A-1", 0, 8, range(2, 8)))  # alert 1 fires (notified) and stays firing
    wait_until(lambda: len(rig.hook.delivered()) == 1, 60, "A-1's firing", rig.logs)
    # shelve alert 1 and the whole rule for a few seconds
    assert rig.manager.post("/api/smap/alerts/1/shelve", {"duration_s": 8, "reason": "known"})[0] == 201
    status, rule_shelf = rig.manager.post("/api/smap/shelves", {
        "scope": "rule", "target": "anomaly-3-frames", "duration_s": 8, "reason": "pass over the SAA"})
    assert status == 201
    # A-1 resolves under its shelf (its all-clear waits); D-1 fires and resolves under the rule's shelf
    rig.produce(anomaly("A-1", 8, 6, range(0)) + anomaly("D-1", 0, 14, range(2, 8)))
    wait_until(lambda: rig.stored_offsets() == 28, 30, "every result applied", rig.logs)
    states = dict(query(rig.db, "SELECT entity, state FROM alerts"))
    assert states == {"A-1": "resolved", "D-1": "resolved"}
    outbox = query(rig.db, "SELECT a.entity, o.event, o.status FROM notification_outbox o JOIN alerts a"
                           " ON a.id = o.alert_id WHERE o.channel = 'slack' ORDER BY a.entity, o.id")
    assert outbox == [("A-1", "firing", "delivered"), ("A-1", "resolved", "held"), ("D-1", "firing", "dropped")]
    assert len(rig.hook.delivered()) == 1
    # the shelves run out: the all-clear of the alert that was notified goes out, D-1's never does
    wait_until(lambda: len(rig.hook.delivered()) == 2, 30, "the released all-clear", rig.logs)
    assert "resolved on SAT-001/A-1" in rig.hook.delivered()[1]["text"]
    assert query(rig.db, "SELECT username, method, action FROM audit_log WHERE action = 'shelf_expired'") == [
        ("system", "system", "shelf_expired")] * 2
    assert {s["ended_by"] for s in rig.manager.get("/api/smap/shelves?active=false")[1]["shelves"]} == {"expiry"}
    assert rig.manager.post(f"/api/smap/shelves/{rule_shelf['id']}/unshelve", {})[0] == 409
    time.sleep(1.5)
    assert len(rig.hook.delivered()) == 2
