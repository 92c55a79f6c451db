"""Shared fixtures: small trained checkpoints built once per test session (seeded, a few epochs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smap_shared.data import VendoredSource
from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.train import TrainConfig, train_entity

REPO_ROOT = Path(__file__).resolve().parents[1]

# The services the tests start bind loopback and run in the development mode without login, whatever the
# caller's shell says, unless a test turns authentication on for its own services (tests/integration/
# test_auth.py, test_bind_loopback.py).
os.environ["SMAP_AUTH"] = "off"


@pytest.fixture(scope="session")
def source() -> VendoredSource:
    return VendoredSource()


@pytest.fixture(scope="session")
def quick_ckpt_dir(tmp_path_factory: pytest.TempPathFactory, source: VendoredSource) -> Path:
    """Checkpoints for the 9 fleet entities plus a couple more, trained briefly (weights need not be good,
    only fixed: every comparison in the tests is against the same checkpoint)."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = TrainConfig(epochs=2)
    for ch in ("A-1", "A-2", "A-3", "D-1", "D-2", "E-1", "P-1", "P-2", "G-1"):
        train_entity(source.load(ch), cfg).save(out / f"{ch}.ckpt")
    return out


@pytest.fixture(scope="session")
def a1_ckpt(quick_ckpt_dir: Path) -> Checkpoint:
    return Checkpoint.load(quick_ckpt_dir / "A-1.ckpt")
