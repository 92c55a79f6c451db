"""The dashboard's page logic (smap-operation-server/web/lib.js) under node: its own unit tests
(tests/web/, node's test runner), and its hit and false-alarm counts against the evaluation's metrics on the
same flags, so the page says what the report would say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from smap_shared.evaluation.metrics import event_metrics, point_counts, runs

REPO_ROOT = Path(__file__).resolve().parents[3]
LIB = REPO_ROOT / "smap-operation-server" / "web" / "lib.js"
NODE_TESTS = REPO_ROOT / "tests" / "web"


def node() -> str:
    found = shutil.which("node")
    assert found, "node not installed: scripts/test.sh installs it with npm (the dashboard needs it anyway)"
    return found


def test_page_logic_unit_tests_pass_under_node() -> None:
    proc = subprocess.run([node(), "--test", str(NODE_TESTS)], capture_output=True, text=True, timeout=120,
                          check=False)
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.MULTILINE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert passed and int(passed.group(1)) >= 6, proc.stdout[-2000:]


def test_hit_counts_equal_the_evaluation_metrics() -> None:
    """Random label and flag vectors: labelled points, hits and points flagged outside labels are the
    point-wise counts; false alarms are the event-level false positives (telemanom's definition)."""
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(200):
        n = int(rng.integers(0, 60))
        truth = rng.random(n) < rng.uniform(0.0, 0.5)
        flags = rng.random(n) < rng.uniform(0.0, 0.6)
        cases.append((truth, flags))
    script = (
        f"const lib = require({json.dumps(str(LIB))});"
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(cases.map(([g, d]) => lib.hitCounts(g, d))));"
    )
    payload = json.dumps([[t.astype(int).tolist(), f.astype(int).tolist()] for t, f in cases])
    proc = subprocess.run([node(), "-e", script], input=payload, capture_output=True, text=True, timeout=60,
                          check=True)
    page = json.loads(proc.stdout)
    assert len(page) == len(cases)
    for (truth, flags), got in zip(cases, page, strict=True):
        segments = runs(truth)
        pts = point_counts(flags, truth)
        ev = event_metrics(flags, segments).counts
        assert got == {"labelled": int(truth.sum()), "hits": pts.tp, "outside": pts.fp, "falseAlarms": ev.fp}, (
            truth.astype(int).tolist(), flags.astype(int).tolist())
