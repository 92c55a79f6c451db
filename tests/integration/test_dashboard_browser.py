"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser is
downloaded), on the real chain: the simulator fills VictoriaMetrics with A-1's history across its labelled
anomaly, the page is loaded, SAT-001 -> A-1 -> sensor_0 is picked, the charts must fill with the stored
points, and a live result produced by a second simulator run must reach the page over the WebSocket.
The screenshot is saved in the test's tmp dir (and copied to $SMAP_DASHBOARD_SCREENSHOT when set)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, chromium_page
from kafka_io import produce

from smap_shared.infra.chain import Chain, running_chain
from smap_shared.operations.harness import OperationServer
from smap_shared.schemas import AlertEvent, SensorContribution, utc_now

pytestmark = pytest.mark.integration

ENTITIES = ["A-1", "A-2"]
# A-1's labelled anomaly is 4690..4774; the deployed rule alarms only after 250 frames of a stream (warm-up)
START, HISTORY, LIVE = 4400, 300, 80
INTERVAL_S = 0.2  # 300 frames in 60 s: about 144 points at the 5-minute window's step (300 s / 720)


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    # SMAP_DASHBOARD_CHECKPOINTS: fully trained checkpoints for docs/dashboard.png (quick ones detect little)
    ckpts = Path(os.environ.get("SMAP_DASHBOARD_CHECKPOINTS") or quick_ckpt_dir)
    with running_chain(ckpts, ENTITIES, tmp_path, redis_db=10) as c:
        yield c


def alert_event() -> bytes:
    now = utc_now()
    return AlertEvent(event="firing", alert_id=41, rule="a1-test", severity="critical", state="firing",
                      satellite_id="SAT-001", entity="A-1", stream_id="SAT-001/A-1", score=0.9,
                      top_sensors=[SensorContribution(id="sensor_0", error=1.5)], alarm_causes=["value_step"],
                      started_at=now, at=now).model_dump_json().encode()


def points(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    return sum(v is not None for v in body["anomaly_score"])


def test_dashboard_shows_history_then_live(chain: Chain, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium)"
    chain.run_simulator(START, HISTORY, interval_s=INTERVAL_S)
    server = OperationServer(tmp_path / "os", chain.vm_url(), kafka_bootstrap=f"localhost:{chain.kafka_port}")
    server.start(wait_feed=True)
    try:
        overview = f"{server.url}/api/smap/entity/A-1/overview?window=5m&step=100ms"
        chain.wait_for(lambda: points(overview) >= HISTORY, 120, "A-1's history in VictoriaMetrics")

        with chromium_page({"width": 1500, "height": 1250}) as (page, errors):
            # the alert manager is not running here: its 503 is expected (and shown in the alerts panel)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "503" not in m.text
                    else None)
            page.goto(f"{server.url}/?window=5m")
            page.select_option("#satellite", "SAT-001")
            page.select_option("#entity", "A-1")
            page.wait_for_function("document.querySelectorAll('#sensor option').length === 25")
            # quick re-selections overlap their loads: the list must end as A-1's 25 sensors, not 50 or A-2's
            page.evaluate("""() => { const s = document.querySelector('#entity');
                for (const v of ['A-2', 'A-1', 'A-1']) { s.value = v; s.dispatchEvent(new Event('change')); } }""")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(300)
            assert page.locator("#sensor option").count() == 25
            assert page.input_value("#entity") == "A-1"
            page.select_option("#sensor", "sensor_0")
            page.wait_for_function(
                "Number(document.querySelector('#score-chart').dataset.points) >= 120"
                " && Number(document.querySelector('#sensor-chart').dataset.points) >= 120"
                " && Number(document.querySelector('#error-chart').dataset.points) >= 120"
                " && Number(document.querySelector('#bars-chart').dataset.points) === 25", timeout=30_000)
            assert page.input_value("#entity") == "A-1" and page.input_value("#sensor") == "sensor_0"
            assert page.locator("#state").inner_text().lower() in ("normal", "anomaly")
            before = page.evaluate("window.smapDashboard.overview.timestamps.length")
            # the history carries, per point, why the alarm was up (the detector chart's legend shows it)
            assert page.evaluate("(o => o.why.length === o.timestamps.length && o.why.every((w, i) =>"
                                 " (o.detected[i] === 1) === (w.length > 0) || o.detected[i] == null))"
                                 "(window.smapDashboard.overview)")
            # canvases really drawn: uPlot made one per chart, sized to the container
            assert page.locator("#score-chart canvas").count() == 1
            assert "labelled points" in page.locator("#hits").inner_text()
            page.wait_for_function("document.querySelector('#alerts-status').textContent.includes('unavailable')")

            live = threading.Thread(
                target=chain.run_simulator, args=(START + HISTORY, LIVE), kwargs={"interval_s": INTERVAL_S})
            live.start()
            page.wait_for_function("Number(document.querySelector('#live-count').textContent) >= 20",
                                   timeout=120_000)
            live.join(120)
            # the live badge says why an alarm is up, and says nothing when there is none
            badge, cause = page.locator("#state").inner_text().lower(), page.locator("#cause").inner_text()
            assert badge in ("normal", "anomaly") and (badge == "anomaly") == bool(cause.strip()), (badge, cause)
            # an alert event on the real topic shows in the panel; acknowledging without the alert manager
            # says so instead of breaking the page
            bootstrap = f"localhost:{chain.kafka_port}"
            sender = threading.Thread(  # Playwright's sync API owns this thread's event loop
                target=lambda: asyncio.run(produce(bootstrap, "smap-alerts", [(b"SAT-001/A-1", alert_event())])))
            sender.start()
            sender.join(60)
            page.wait_for_selector("#alerts li button.ack", timeout=30_000)
            panel = page.locator("#alerts").inner_text()
            assert "#41 critical firing: a1-test" in panel
            assert "why: value jumped more than ever in training" in panel
            page.click("#alerts li button.ack")
            page.wait_for_function("document.querySelector('#alerts-status').textContent.includes('failed')")
            page.wait_for_timeout(500)
            after = page.evaluate("window.smapDashboard.overview.timestamps.length")
            assert after > before, (before, after)
            assert page.locator("#live").inner_text() == "live"
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        assert errors == [], errors
        target = os.environ.get("SMAP_DASHBOARD_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        assert "Traceback" not in (server.workdir / "operation-server.log").read_text()
    finally:
        server.stop()
