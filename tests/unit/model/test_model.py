from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from smap_shared.data import ChannelData, VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.network import OmniAnomaly
from smap_shared.model.normalization import Normalizer
from smap_shared.model.numpy_net import NumpyOmniAnomaly
from smap_shared.model.scorer import Scorer
from smap_shared.model.train import TrainConfig, score_sequence_torch, train_entity


def test_network_has_the_spec_structure() -> None:
    m = OmniAnomaly(25)
    assert isinstance(m.lstm, torch.nn.GRU) and m.lstm.num_layers == 2 and m.lstm.hidden_size == 32
    assert [type(x).__name__ for x in m.encoder] == [
        "Linear", "PReLU", "Linear", "PReLU", "Flatten", "Linear"
    ]
    assert m.encoder[5].out_features == 16
    assert [type(x).__name__ for x in m.decoder] == [
        "Linear", "PReLU", "Linear", "PReLU", "Linear", "Sigmoid"
    ]
    assert m.decoder[0].in_features == 8 and m.decoder[4].out_features == 25


def test_stepping_equals_whole_sequence(a1_ckpt: Checkpoint, source: VendoredSource) -> None:
    """The hidden state carries: 300 single steps == one GRU pass over the sequence (<= 1e-6)."""
    z = a1_ckpt.normalizer.transform(source.load("A-1").test[4600:4900])
    model = OmniAnomaly(25).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in a1_ckpt.weights.items()})
    with torch.no_grad():
        whole, _, _, _ = model(torch.from_numpy(z).unsqueeze(1))
        hidden = None
        steps = []
        for row in z:
            r, _, _, hidden = model(torch.from_numpy(row).view(1, 1, -1), hidden)
            steps.append(r.view(-1))
    np.testing.assert_allclose(torch.stack(steps).numpy(), whole.squeeze(1).numpy(), atol=1e-6, rtol=0)
    # and the numpy serving path agrees with torch
    np_scores = Scorer(a1_ckpt).run(source.load("A-1").test[4600:4900]).anomaly_score
    torch_scores = score_sequence_torch(a1_ckpt.weights, 25, z)
    np.testing.assert_allclose(np_scores, torch_scores, atol=1e-9, rtol=0)


def test_state_really_carries(a1_ckpt: Checkpoint) -> None:
    net = NumpyOmniAnomaly(a1_ckpt.weights)
    x = np.full(25, 0.5)
    r1, _, h1 = net.step(x, net.initial_state())
    r2, _, _ = net.step(x, h1)
    assert not np.allclose(r1, r2)  # same input, different state -> different output


def test_inference_is_deterministic(a1_ckpt: Checkpoint, source: VendoredSource) -> None:
    seq = source.load("A-1").test[:50]
    a = Scorer(a1_ckpt).run(seq).anomaly_score
    b = Scorer(a1_ckpt).run(seq).anomaly_score
    np.testing.assert_array_equal(a, b)


def test_checkpoint_roundtrip(a1_ckpt: Checkpoint, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    a1_ckpt.save(path)
    back = Checkpoint.load(path)
    assert path.exists() and not (tmp_path / "model.ckpt.npz").exists()
    assert back.entity == "A-1" and back.n_sensors == 25 and back.threshold == a1_ckpt.threshold
    assert back.meta == a1_ckpt.meta
    for k, v in a1_ckpt.weights.items():
        np.testing.assert_array_equal(back.weights[k], v)
    np.testing.assert_array_equal(back.normalizer.span, a1_ckpt.normalizer.span)
    for key in ("entity", "n_sensors", "data_hash", "train_config", "threshold_fit"):
        assert key in back.meta
    assert back.meta["train_config"]["seed"] == 42


def test_training_is_reproducible(source: VendoredSource) -> None:
    data = source.load("A-3")
    cfg = TrainConfig(epochs=1, seed=7)
    a, b = train_entity(data, cfg), train_entity(data, cfg)
    c = train_entity(data, dataclasses.replace(cfg, seed=8))
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_threshold_uses_train_data_only(source: VendoredSource) -> None:
    """Replacing the test split (and its labels) changes nothing in the checkpoint."""
    data = source.load("A-3")
    cfg = TrainConfig(epochs=1)
    rng = np.random.default_rng(1)
    tampered = ChannelData(data.channel, data.train, rng.uniform(-1, 1, data.test.shape), [])
    a, b = train_entity(data, cfg), train_entity(tampered, cfg)
    assert a.threshold == b.threshold
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])


def test_normalisation_is_robust_to_constant_train_columns(source: VendoredSource) -> None:
    a1 = source.load("A-1")
    assert np.ptp(a1.train[:, 0]) == 0  # the fact that breaks naive min-max
    norm = Normalizer.fit(a1.train)
    z = norm.transform(a1.test)
    assert np.abs(z).max() <= 2.0
    naive = (a1.test[:, 0] - a1.train[:, 0].min()) / (np.ptp(a1.train[:, 0]) + 1e-4)
    assert np.abs(naive).max() > 1e3


def test_scorer_rejects_bad_input(a1_ckpt: Checkpoint) -> None:
    s = Scorer(a1_ckpt)
    with pytest.raises(ValueError, match="expects 25"):
        s.step(np.zeros(24), s.initial_state())
    with pytest.raises(ValueError, match="NaN"):
        s.step(np.full(25, np.nan), s.initial_state())


def test_score_is_mse_of_normalised_input(a1_ckpt: Checkpoint, source: VendoredSource) -> None:
    s = Scorer(a1_ckpt)
    x = source.load("A-1").test[100]
    out, _ = s.step(x, s.initial_state())
    z = a1_ckpt.normalizer.transform(x)
    recon_z = a1_ckpt.normalizer.transform(out.reconstruction)
    assert out.anomaly_score == pytest.approx(float(np.mean((z - recon_z) ** 2)), abs=1e-12)
    assert out.anomaly_score == pytest.approx(float(out.sensor_error.mean()), abs=1e-15)
    assert not out.anomaly_detected  # the deployed rule never alarms during a stream's warm-up


def test_checkpoint_carries_the_deployed_rule_fitted_on_train(a1_ckpt: Checkpoint) -> None:
    from smap_shared.model.rules import DEPLOYED_RULE_NAME, CausalNdtRule, rule_from_dict

    rule = rule_from_dict(a1_ckpt.meta["decision_rule"])
    assert isinstance(rule, CausalNdtRule) and a1_ckpt.meta["decision_rule_name"] == DEPLOYED_RULE_NAME
    assert rule.train_max > 0 and len(rule.initial) == min(rule.window, 2880)
    assert Scorer(a1_ckpt).rule == rule
