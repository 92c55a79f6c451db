"""The OmniAnomaly network exactly as the spec prints it (torch, used for training and as a reference)."""

from __future__ import annotations

import torch
from torch import nn

N_HIDDEN = 32
N_LATENT = 8


class OmniAnomaly(nn.Module):
    """2-layer GRU + VAE. Stateful: the hidden state returned for step t is passed in for step t+1.

    Unlike the widely copied reference implementation, which replaces the hidden state with random noise
    after the first step, the state here is carried, so scoring a stream step by step equals one pass over
    the whole sequence.
    """

    def __init__(self, n_sensors: int) -> None:
        super().__init__()
        self.n_sensors = n_sensors
        self.lstm = nn.GRU(n_sensors, N_HIDDEN, num_layers=2)
        self.encoder = nn.Sequential(
            nn.Linear(N_HIDDEN, N_HIDDEN), nn.PReLU(),
            nn.Linear(N_HIDDEN, N_HIDDEN), nn.PReLU(),
            nn.Flatten(),
            nn.Linear(N_HIDDEN, 2 * N_LATENT),
        )
        self.decoder = nn.Sequential(
            nn.Linear(N_LATENT, N_HIDDEN), nn.PReLU(),
            nn.Linear(N_HIDDEN, N_HIDDEN), nn.PReLU(),
            nn.Linear(N_HIDDEN, n_sensors), nn.Sigmoid(),
        )

    def forward(
        self, x: torch.Tensor, hidden: torch.Tensor | None = None, sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (T, B, n) -> reconstruction (T, B, n), mu, logvar (T, B, 8), hidden (2, B, 32).

        `sample=False` decodes mu (deterministic inference); training samples with the reparameterisation.
        """
        t, b, _ = x.shape
        out, hidden = self.lstm(x, hidden)
        # Flatten in the spec's encoder flattens from dim 1, so feed it (T*B, 32) rows.
        stats = self.encoder(out.reshape(t * b, N_HIDDEN))
        mu, logvar = torch.split(stats, [N_LATENT, N_LATENT], dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.decoder(z)
        return (recon.reshape(t, b, -1), mu.reshape(t, b, -1), logvar.reshape(t, b, -1), hidden)
