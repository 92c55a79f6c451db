"""Torch step scorer for GPU serving: same interface and numbers as `Scorer` (float64 on the device)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.scorer import HIDDEN_SIZE, Scorer, StepOutput

Array = npt.NDArray[np.float64]


class TorchScorer(Scorer):
    """The GRU/VAE forward on a torch device; normalisation, error and decision rule shared with Scorer."""

    def __init__(self, ckpt: Checkpoint, device: str = "cuda:0") -> None:
        import torch

        from smap_shared.model.network import OmniAnomaly

        super().__init__(ckpt)
        self.torch = torch
        self.device = torch.device(device)
        model = OmniAnomaly(ckpt.n_sensors).double()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.weights.items()})
        self.model = model.to(self.device).eval()

    def step(self, x_raw: Array, state: Array) -> tuple[StepOutput, Array]:
        torch = self.torch
        x = self.check_input(x_raw)
        z = self.norm.transform(x)
        with torch.no_grad():
            xt = torch.from_numpy(z).to(self.device).view(1, 1, -1)
            h = torch.from_numpy(np.ascontiguousarray(state[:HIDDEN_SIZE])).to(self.device).view(2, 1, -1)
            recon_t, _, _, h_new = self.model(xt, h)
        recon: Array = recon_t.view(-1).cpu().numpy()
        return self.decide(z, recon, state, h_new.view(-1).cpu().numpy(), x)
