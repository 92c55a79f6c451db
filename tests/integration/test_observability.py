"""Every PromQL example in docs/ returns data on the running chain: the scores the consumer imports, and the
services' own /metrics and Triton's metrics, scraped by the chain's VictoriaMetrics exactly as start-smap.sh
configures it natively (smap_shared/infra/scrape.py); the dashboard's system panel shows them."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium_page

from smap_shared.infra.chain import REPO_ROOT, Chain, running_chain
from smap_shared.operations.harness import OperationServer

pytestmark = pytest.mark.integration

QUERY = re.compile(r"""(?:\?query=([^'"\s]+)|--data-urlencode '(?:query=)([^']+)')""")


def doc_queries() -> list[tuple[str, str]]:
    """(page, query) of every curl against VictoriaMetrics' /api/v1/query in docs/."""
    out = []
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        for line in page.read_text().splitlines():
            if "curl" in line and ("8428/api/v1/query" in line or "curl $Q" in line):
                out += [(page.name, a or b) for a, b in QUERY.findall(line)]
    return out


def test_the_docs_have_the_spec_queries_and_the_observability_ones() -> None:
    queries = [q for _, q in doc_queries()]
    assert "smap_anomaly_score" in queries and "min by (job) (up)" in queries
    assert any(q.startswith("histogram_quantile(0.95") for q in queries) and len(queries) >= 15


@pytest.fixture
def chain(tmp_path: Path, quick_ckpt_dir: Path) -> Iterator[Chain]:
    with running_chain(quick_ckpt_dir, ["A-1", "A-2"], tmp_path, redis_db=8) as c:
        c.scrape_services(interval_s=1.0)
        yield c


def run(vm: str, query: str) -> list[dict[str, object]]:
    url = f"{vm}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", (query, body)
    return list(body["data"]["result"])


def test_every_promql_example_in_the_docs_returns_data(chain: Chain, tmp_path: Path) -> None:
    vm = chain.vm_url()
    # scraped before the replay, so the counters and histograms grow between two scrapes (a rate over
    # samples that all came after the observations is 0, and histogram_quantile of zeros has no value)
    jobs = ("smap-inference-trigger", "smap-victoria-consumer", "smap-analysis-worker", "triton")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and {r["metric"]["job"] for r in run(vm, "up == 1")} < set(jobs):  # type: ignore[index]
        time.sleep(0.5)
    chain.run_simulator(4600, 120, interval_s=0.1)
    pending = dict.fromkeys(q for _, q in doc_queries())
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for q in list(pending):
            if run(vm, q):
                pending.pop(q)
        time.sleep(1)
    assert not pending, f"no data for {list(pending)}; logs in {chain.logs}"
    # the scrape reached every running service: up == 1 for each job
    up = {r["metric"]["job"]: float(r["value"][1]) for r in run(vm, "min by (job) (up)")}  # type: ignore[index]
    for job in jobs:
        assert up.get(job) == 1.0, (job, up)
    # and the numbers mean what they say: the trigger published every frame the simulator sent
    def published() -> float:
        got = run(vm, 'smap_trigger_messages_total{outcome="published"}')
        return float(got[0]["value"][1]) if got else 0.0  # type: ignore[index]

    chain.wait_for(lambda: published() == 240, 30, "the trigger's counter at the replay's 2 x 120 frames")

    # the dashboard's system panel, from the same series, in Chromium
    server = OperationServer(tmp_path / "os", vm).start()
    try:
        with urllib.request.urlopen(f"{server.url}/api/smap/system", timeout=30) as resp:
            rows = {r["job"]: r for r in json.loads(resp.read())["services"]}
        assert rows["smap-inference-trigger"]["up"] == 1 and rows["smap-inference-trigger"]["per_s"] > 0
        assert rows["smap-analysis-worker"]["blocked"] == 0 and rows["smap-victoria-consumer"]["lag"] is not None
        assert rows["smap-inference-trigger"]["dead_letters"] == 0 and rows["triton"]["per_s"] > 0
        with chromium_page() as (page, errors):
            page.goto(server.url + "/#system")
            page.wait_for_selector("#system-table tbody tr")
            text = page.inner_text("#system-table")
            assert "smap-inference-trigger" in text and "triton" in text and "DOWN" not in text
        assert errors == []
    finally:
        server.stop()
