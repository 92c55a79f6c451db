"""Alerting on the real chain: simulator -> trigger -> RabbitMQ -> worker -> Triton (A-1 trained with the
deployed defaults) -> results topic -> smap-alert-manager -> PostgreSQL, a local webhook and SMTP server.

A-1 is replayed from row 4430 (250 rows of warm-up, during which the deployed rule never alarms) across its
labelled anomaly window, test rows 4690-4774: exactly one alert must fire, with the score and top sensors
the offline model gives at the firing frame, be notified once per channel, resolve after the detector's
hold ends, and be acknowledged through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alert_harness import (
    AlertManager,
    WebhookReceiver,
    alert_env,
    query,
    smtp_server,
    throwaway_database,
    wait_until,
)

from smap_shared.alerting.rules import load_rules
from smap_shared.data import VendoredSource
from smap_shared.infra.chain import Chain, running_chain
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.rules import cause_names
from smap_shared.model.scorer import Scorer
from smap_shared.model.train import TrainConfig, train_entity

pytestmark = pytest.mark.integration

ENTITY, STREAM = "A-1", "SAT-001/A-1"
START, STEPS = 4430, 470
LABELLED = range(4690, 4775)


@pytest.fixture(scope="module")
def deployed_a1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A-1 trained with the project's defaults (what setup_models.sh deploys), a few seconds."""
    out = tmp_path_factory.mktemp("a1-ckpt")
    train_entity(VendoredSource().load(ENTITY), TrainConfig()).save(out / f"{ENTITY}.ckpt")
    return out


@pytest.fixture
def chain(tmp_path: Path, deployed_a1: Path) -> Iterator[Chain]:
    with running_chain(deployed_a1, [ENTITY], tmp_path, redis_db=11) as c:
        yield c


def test_a1_anomaly_fires_one_alert_notified_once(chain: Chain, deployed_a1: Path) -> None:
    # offline: where the deployed rule fires on this replay, with which score and sensors
    seq = VendoredSource().load(ENTITY).test[START : START + STEPS]
    ref = Scorer(Checkpoint.load(deployed_a1 / f"{ENTITY}.ckpt")).run(seq)
    frames = load_rules().enabled[0].condition.frames  # type: ignore[union-attr]
    det = ref.anomaly_detected
    fire = next(i for i in range(frames - 1, STEPS) if det[i - frames + 1 : i + 1].all())
    assert START + fire in LABELLED, f"offline, the rule fires at row {START + fire}, outside the label"
    # top sensors: each sensor's peak error over the alert's frames so far (pending start .. firing)
    peak = ref.sensor_error[fire - frames + 1 : fire + 1].max(axis=0)
    order = np.argsort(-peak, kind="stable")[:3]
    expected_top = [f"sensor_{k}" for k in order]
    # why: every cause the deployed rule reported over the alert's frames
    bits = int(np.bitwise_or.reduce(ref.alarm_cause[fire - frames + 1 : fire + 1]))
    expected_causes = cause_names(bits)
    assert expected_causes, "the detector alarmed without a cause"

    with throwaway_database() as db, WebhookReceiver().running() as hook, smtp_server() as (smtp_port, mails):
        # the chain's frames are stamped now: the default max notification age applies
        env = alert_env(f"localhost:{chain.kafka_port}", db, hook, smtp_port, ALERT_NOTIFY_MAX_AGE_S="3600")
        manager = AlertManager({**chain.env(), **env}, chain.logs)
        manager.start()
        try:
            chain.run_simulator(START, STEPS)
            wait_until(lambda: query(db, "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")[0][0]
                       >= STEPS, 240, "the alert manager to read every result", chain.logs)
            wait_until(lambda: len(hook.delivered()) >= 1 and len(mails) >= 1, 30, "the notifications")

            status, listing = manager.get("/api/smap/alerts")
            assert status == 200
            alerts = listing["alerts"]
            assert len(alerts) == 1, alerts
            alert = alerts[0]
            assert (alert["stream_id"], alert["satellite_id"], alert["entity"]) == (STREAM, "SAT-001", ENTITY)
            assert alert["rule"] == "anomaly-3-frames" and alert["severity"] == "critical"
            assert alert["score_at_firing"] == pytest.approx(ref.anomaly_score[fire], abs=1e-6)
            assert [s["id"] for s in alert["top_sensors"]] == expected_top
            assert alert["top_sensors"][0]["error"] == pytest.approx(peak[order[0]], abs=1e-6)
            assert alert["alarm_causes"] == expected_causes

            status, one = manager.get(f"/api/smap/alerts/{alert['id']}")
            steps = [(t["from"], t["to"], t["index"]) for t in one["transitions"]]
            assert steps[:2] == [(None, "pending", START + fire - frames + 1), ("pending", "firing", START + fire)]
            clear = np.flatnonzero(~det[fire:])
            if clear.size >= 5:  # the detector's hold ended within the replay: the alert resolved
                assert alert["state"] == "resolved" and steps[2][:2] == ("firing", "resolved")
            assert [(d["channel"], d["status"]) for d in one["deliveries"]] == [
                ("slack", "delivered"), ("email", "delivered")]

            # exactly one webhook POST and one email, naming the stream and the top sensor
            assert len(hook.posts) == 1 and len(mails) == 1
            assert STREAM in hook.posts[0][1]["text"] and expected_top[0] in str(hook.posts[0][1]["blocks"])
            assert STREAM in str(mails[0]["Subject"]) and expected_top[0] in mails[0].get_content()
            assert "Why the detector alarmed: " + ", ".join(expected_causes) in mails[0].get_content()

            status, acked = manager.post(f"/api/smap/alerts/{alert['id']}/ack", {"note": "seen"})
            assert status == 200 and acked["acknowledged_by"] == "local-dev"  # SMAP_AUTH=off: test_auth.py
            assert manager.get("/api/smap/alerts?acknowledged=false")[1]["alerts"] == []
        finally:
            assert manager.stop() == 0
