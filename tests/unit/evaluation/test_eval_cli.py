"""The evaluation CLI end to end on one channel, with an untrained checkpoint (fast, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smap_shared.data import default_source
from smap_shared.evaluation import evaluate
from smap_shared.evaluation.scoring import score_channel
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.normalization import Normalizer
from smap_shared.model.rules import rule_from_dict
from smap_shared.model.scorer import Scorer

CHANNEL = "A-6"  # the shortest SMAP channel


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from smap_shared.model.network import OmniAnomaly

    torch.manual_seed(0)
    data = default_source().load(CHANNEL)
    net = OmniAnomaly(data.n_sensors)
    weights = {k: v.detach().double().numpy().copy() for k, v in net.state_dict().items()}
    d = tmp_path_factory.mktemp("ckpt")
    Checkpoint(CHANNEL, data.n_sensors, weights, Normalizer.fit(data.train), 0.3, {"train_config": {}}).save(
        d / f"{CHANNEL}.ckpt"
    )
    return d


def test_scores_are_the_scorer_run(ckpt_dir: Path) -> None:
    data = default_source().load(CHANNEL)
    sc = score_channel(ckpt_dir / f"{CHANNEL}.ckpt", data)
    ref = Scorer(Checkpoint.load(ckpt_dir / f"{CHANNEL}.ckpt")).run(data.test[:50])
    assert np.array_equal(sc.test.score[:50], ref.anomaly_score)
    assert sc.segments == [(1890, 1930)]
    assert sc.train.sensor_error.shape == data.train.shape


def test_cli_writes_json_markdown_and_plots(ckpt_dir: Path, tmp_path: Path) -> None:
    out_json, out_md, plots = tmp_path / "e.json", tmp_path / "e.md", tmp_path / "plots"
    evaluate.main([
        "--channels", CHANNEL, "--checkpoints", str(ckpt_dir), "--json", str(out_json), "--md", str(out_md),
        "--plots", str(plots), "--jobs", "1",
    ])
    rep = json.loads(out_json.read_text())
    assert rep["deployed_rule"] == evaluate.DEPLOYED_RULE
    assert rep["n_events"] == 1 and rep["channels"] == [CHANNEL]
    assert set(rep["rules"]) == set(evaluate.RULES)
    for r in rep["rules"].values():
        for part in (r["aggregate"], r["channels"][CHANNEL]):
            assert set(part) >= {"event", "point", "pa_k", "auprc", "roc_auc", "delay"}
            for key in ("event", "point"):
                assert set(part[key]) >= {"precision", "recall", "f1", "tp", "fp", "fn"}
                assert part[key]["tp"] + part[key]["fn"] == (1 if key == "event" else 41)
            assert set(part["pa_k"]["by_k"]) == {"0", "20", "50", "80", "100"}
            assert part["pa_k"]["by_k"]["100"] == part["point"]
    assert rep["rules"]["fixed"]["params"] == {"kind": "fixed", "threshold": 0.16}
    # the deployed rule's global parameters rebuild the rule
    params = {k: v for k, v in rep["rules"][evaluate.DEPLOYED_RULE]["params"].items() if k != "initial"}
    assert rule_from_dict(params) == evaluate.RULES[evaluate.DEPLOYED_RULE]
    assert (plots / f"{CHANNEL}.png").stat().st_size > 10_000
    md = out_md.read_text()
    assert f"Deployed rule: `{evaluate.DEPLOYED_RULE}`" in md and "| A-6 |" in md


def test_cli_refuses_missing_checkpoints_without_train_missing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--train-missing"):
        evaluate.main(["--channels", CHANNEL, "--checkpoints", str(tmp_path), "--json", str(tmp_path / "x.json")])


def test_fit_deployed_rule_uses_the_train_split_as_a_stream(ckpt_dir: Path) -> None:
    from smap_shared.evaluation.scoring import fit_deployed_rule
    from smap_shared.model.rules import DEPLOYED_RULE

    data = default_source().load(CHANNEL)
    ckpt = Checkpoint.load(ckpt_dir / f"{CHANNEL}.ckpt")
    rule = fit_deployed_rule(ckpt, data.train)
    train = Scorer(ckpt).run(data.train)
    assert rule == DEPLOYED_RULE.fit(train.anomaly_score, train.sensor_error, data.train)
    assert rule_from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_the_detector_is_scored_against_operators_verdicts(ckpt_dir: Path, tmp_path: Path) -> None:
    """The alert manager's verdict export (telemanom's layout, spacecraft = satellite) as the labels."""
    labels = tmp_path / "labeled_anomalies.csv"
    labels.write_text("chan_id,spacecraft,anomaly_sequences,class,num_values\n"
                      'A-6,SAT-002,"[[100, 140], [900, 960]]","[operator_verdict, operator_verdict]",\n'
                      'A-6,SAT-003,"[[5, 6]]",[operator_verdict],\n')
    out_json = tmp_path / "v.json"
    evaluate.main(["--channels", CHANNEL, "--checkpoints", str(ckpt_dir), "--json", str(out_json),
                   "--md", str(tmp_path / "v.md"), "--no-plots", "--no-selection", "--jobs", "1",
                   "--labels", str(labels), "--spacecraft", "SAT-002"])
    rep = json.loads(out_json.read_text())
    assert rep["dataset"] == "SAT-002" and rep["n_events"] == 2  # the verdicts' events, not SMAP's one
    assert rep["published"] == []  # SMAP's published numbers do not apply
    ev = rep["rules"][evaluate.DEPLOYED_RULE]["channels"][CHANNEL]["event"]
    assert ev["tp"] + ev["fn"] == 2
    # a satellite without verdict rows is no evaluation at all
    with pytest.raises(SystemExit, match="no label row"):
        evaluate.main(["--channels", CHANNEL, "--checkpoints", str(ckpt_dir), "--json", str(out_json),
                       "--md", str(tmp_path / "v.md"), "--no-plots", "--no-selection", "--jobs", "1",
                       "--labels", str(labels), "--spacecraft", "SAT-009"])
    with pytest.raises(SystemExit, match="not found"):
        evaluate.main(["--labels", str(tmp_path / "missing.csv"), "--channels", CHANNEL])
