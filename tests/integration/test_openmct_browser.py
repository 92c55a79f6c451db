"""NASA Open MCT (the `openmct` npm package, served at /openmct/ with the SMAP plugin) in real headless
Chromium on the real chain: the fleet is Open MCT's object tree, a plot of SAT-001/A-1's anomaly score fills
with the chain's stored results (historical provider) and keeps growing from the WebSocket (realtime
provider), and an alert of the real alert manager appears in Open MCT's Fault Management and is acknowledged
and shelved from there, recorded in PostgreSQL. The screenshot is copied to $SMAP_OPENMCT_SCREENSHOT when set."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alert_harness import (
    AlertManager,
    WebhookReceiver,
    alert_env,
    make_result,
    query,
    smtp_server,
    throwaway_database,
    wait_until,
)
from browser import chromium_page
from kafka_io import produce

from smap_shared.infra.chain import Chain, running_chain
from smap_shared.operations.harness import OperationServer

pytestmark = pytest.mark.integration

PLOT = "/openmct/#/browse/smap:fleet/smap:sat~SAT-001/smap:ent~SAT-001~A-1/smap:pt~SAT-001~A-1~anomaly_score"
FAULTS = "/openmct/#/browse/faults.taxonomy:faultManagement.view"


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    with running_chain(quick_ckpt_dir, ["A-1"], tmp_path, redis_db=7) as c:
        yield c


def test_open_mct_plots_the_chain_and_manages_its_alerts_as_faults(chain: Chain, tmp_path: Path) -> None:
    bootstrap = f"localhost:{chain.kafka_port}"
    chain.run_simulator(4600, 120, interval_s=0.2)
    with throwaway_database() as db, WebhookReceiver().running() as hook, smtp_server() as (smtp_port, _):
        manager = AlertManager(alert_env(bootstrap, db, hook, smtp_port), tmp_path)
        manager.start()
        server = OperationServer(tmp_path / "os", chain.vm_url(), kafka_bootstrap=bootstrap,
                                 alert_manager_url=f"http://127.0.0.1:{manager.api_port}").start(wait_feed=True)
        try:
            # an alert on another stream of the fleet: hand-made results on the chain's results topic
            asyncio.run(produce(bootstrap, "smap-inference-results", [
                (b"SAT-002/D-1", make_result("SAT-002", "D-1", i, 2 <= i < 9)) for i in range(10)]))
            wait_until(lambda: query(db, "SELECT count(*) FROM alerts WHERE entity = 'D-1' AND state = 'firing'")
                       == [(1,)], 60, "D-1's alert", tmp_path)
            [(alert_id,)] = query(db, "SELECT id FROM alerts WHERE entity = 'D-1'")
            with chromium_page({"width": 1400, "height": 900}) as (page, errors):
                page.goto(server.url + PLOT)
                page.wait_for_selector(".gl-plot-y-tick-label", timeout=60_000)
                # the historical provider answers the plot's range with the chain's stored scores
                got = page.evaluate("""async () => {
                    const key = 'pt~SAT-001~A-1~anomaly_score';
                    const obj = await openmct.objects.get({namespace: 'smap', key});
                    const b = openmct.time.getBounds();
                    return (await openmct.telemetry.request(obj, {start: b.start, end: b.end})).map(d => d.value);
                }""")
                stored = [v for s in chain.vm_export('{__name__="smap_anomaly_score",entity="A-1"}')
                          for v in s["values"]]
                assert len(got) >= 60 and min(got) >= min(stored) - 1e-12 and max(got) <= max(stored) + 1e-12
                # the plot drew them: its y axis spans the data, not the empty plot's default [-1, 1]
                ticks = [float(t) for t in page.locator(".gl-plot-y-tick-label").all_inner_texts() if t.strip()]
                assert ticks and min(ticks) >= min(got) - (max(got) - min(got)) and ticks != [1.0, 0.5, 0.0, -0.5]
                # realtime: a second replay reaches the plot's subscription over the WebSocket
                page.evaluate("""() => { window.live = 0; openmct.objects.get({namespace: 'smap',
                    key: 'pt~SAT-001~A-1~anomaly_score'}).then(o => openmct.telemetry.subscribe(o,
                    () => { window.live += 1; })); }""")
                live = threading.Thread(target=chain.run_simulator, args=(4720, 40), kwargs={"interval_s": 0.1})
                live.start()
                page.wait_for_function("window.live >= 20", timeout=120_000)
                live.join(120)
                shot = tmp_path / "openmct.png"
                page.screenshot(path=str(shot))

                # the alert as an Open MCT fault: acknowledge it, then shelve it, from Fault Management
                page.goto(server.url + FAULTS)
                item = page.locator("[role=listitem]", has_text=f"#{alert_id} anomaly-3-frames on SAT-002/D-1")
                item.wait_for(timeout=30_000)
                item.locator("input[type=checkbox]").check()
                page.locator(".c-fault-mgmt__toolbar button", has_text="Acknowledge").click()
                page.locator("textarea").fill("seen in Open MCT")
                page.locator("button[aria-label=Save]").click()
                acks = "SELECT by_whom, note FROM alert_acknowledgements WHERE alert_id = %s"
                wait_until(lambda: query(db, acks, (alert_id,)) == [("local-dev", "seen in Open MCT")], 30,
                           "the acknowledgement")
                item.locator("input[type=checkbox]").check()
                page.locator(".c-fault-mgmt__toolbar button", has_text="Shelve").click()
                page.locator("button[aria-label=Save]").click()
                wait_until(lambda: query(db, "SELECT scope, target, by_whom FROM shelves") == [
                    ("alert", str(alert_id), "local-dev")], 30, "the shelf")
                assert query(db, "SELECT extract(epoch FROM expires_at - created_at) FROM shelves") == [(900,)]
            assert errors == []
            if os.environ.get("SMAP_OPENMCT_SCREENSHOT"):
                shutil.copy(shot, os.environ["SMAP_OPENMCT_SCREENSHOT"])
        finally:
            server.stop()
            manager.stop()
