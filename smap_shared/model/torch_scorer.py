"""Torch step scorer for GPU serving: same interface and numbers as `Scorer` (float64 on the device)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import StepOutput

Array = npt.NDArray[np.float64]


class TorchScorer:
    def __init__(self, ckpt: Checkpoint, device: str = "cuda:0") -> None:
        import torch

        from smap_shared.model.network import OmniAnomaly

        self.torch = torch
        self.ckpt = ckpt
        self.device = torch.device(device)
        self.n_sensors = ckpt.n_sensors
        self.threshold = ckpt.threshold
        self.norm = ckpt.normalizer
        model = OmniAnomaly(ckpt.n_sensors).double()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.weights.items()})
        self.model = model.to(self.device).eval()

    def initial_state(self) -> Array:
        return np.zeros((2, 32), dtype=np.float64)

    def step(self, x_raw: Array, state: Array) -> tuple[StepOutput, Array]:
        torch = self.torch
        x = np.asarray(x_raw, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_sensors or not np.isfinite(x).all():
            raise ValueError(f"input_data must be {self.n_sensors} finite values")
        z = self.norm.transform(x)
        with torch.no_grad():
            xt = torch.from_numpy(z).to(self.device).view(1, 1, -1)
            h = torch.from_numpy(state).to(self.device).view(2, 1, -1)
            recon_t, _, _, h_new = self.model(xt, h)
        recon = recon_t.view(-1).cpu().numpy()
        err = (z - recon) ** 2
        score = float(err.mean())
        out = StepOutput(self.norm.inverse(recon), err, score, score > self.threshold, self.threshold)
        return out, h_new.view(2, -1).cpu().numpy()
