"""Numpy forward pass of OmniAnomaly, equal to the torch network to float64 rounding.

A Triton Python-backend stub that imports torch holds ~230 MB; one that imports numpy only ~37 MB. Twenty
models make that the difference between ~4.7 GB and well under 2 GB, so CPU serving runs this path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

N_LAYERS = 2
N_HIDDEN = 32
N_LATENT = 8


def _sigmoid(x: Array) -> Array:
    # tanh form: never overflows, and agrees with torch.sigmoid to float64 rounding (~1e-16).
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def _prelu(x: Array, a: Array) -> Array:
    # Exact for any slope a (no rounding differs from torch's PReLU), and cheaper than np.where.
    out: Array = np.maximum(x, 0.0) + a * np.minimum(x, 0.0)
    return out


class NumpyOmniAnomaly:
    """Weights from a torch state_dict (as float64 arrays); one timestep at a time."""

    def __init__(self, weights: Mapping[str, Array]) -> None:
        w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.gru = [
            (
                w[f"lstm.weight_ih_l{i}"], w[f"lstm.weight_hh_l{i}"],
                w[f"lstm.bias_ih_l{i}"], w[f"lstm.bias_hh_l{i}"],
            )
            for i in range(N_LAYERS)
        ]
        # nn.Sequential indices: Linear 0, PReLU 1, Linear 2, PReLU 3, Flatten 4, Linear 5.
        self.enc = (
            w["encoder.0.weight"], w["encoder.0.bias"], w["encoder.1.weight"],
            w["encoder.2.weight"], w["encoder.2.bias"], w["encoder.3.weight"],
            w["encoder.5.weight"], w["encoder.5.bias"],
        )
        # Linear 0, PReLU 1, Linear 2, PReLU 3, Linear 4, Sigmoid 5.
        self.dec = (
            w["decoder.0.weight"], w["decoder.0.bias"], w["decoder.1.weight"],
            w["decoder.2.weight"], w["decoder.2.bias"], w["decoder.3.weight"],
            w["decoder.4.weight"], w["decoder.4.bias"],
        )
        self.n_sensors = int(self.dec[6].shape[0])

    @staticmethod
    def initial_state() -> Array:
        return np.zeros((N_LAYERS, N_HIDDEN), dtype=np.float64)

    def step(self, x: Array, h: Array) -> tuple[Array, Array, Array]:
        """One timestep: normalised input (n,), state (2, 32) -> reconstruction (n,), mu (8,), new state."""
        recon, mu, new_h = self.step_many(x[np.newaxis, :], h[np.newaxis])
        return recon[0], mu[0], new_h[0]

    def step_many(self, x: Array, h: Array) -> tuple[Array, Array, Array]:
        """One timestep of B independent streams at once (one vectorised step, the rows never mix):
        inputs (B, n), states (B, 2, 32) -> reconstructions (B, n), mu (B, 8), new states (B, 2, 32).
        Row b equals `step(x[b], h[b])` up to float64 rounding of the matrix products (~1e-16)."""
        inp = x
        new_h = np.empty_like(h)
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.gru):
            gi = inp @ w_ih.T + b_ih
            gh = h[:, layer] @ w_hh.T + b_hh
            rz = _sigmoid(gi[:, : 2 * N_HIDDEN] + gh[:, : 2 * N_HIDDEN])
            r, z = rz[:, :N_HIDDEN], rz[:, N_HIDDEN:]
            n = np.tanh(gi[:, 2 * N_HIDDEN :] + r * gh[:, 2 * N_HIDDEN :])
            new_h[:, layer] = (1.0 - z) * n + z * h[:, layer]
            inp = new_h[:, layer]
        w0, b0, a1, w2, b2, a3, w5, b5 = self.enc
        e = _prelu(inp @ w0.T + b0, a1)
        e = _prelu(e @ w2.T + b2, a3)
        mu = (e @ w5.T + b5)[:, :N_LATENT]
        d0, c0, p1, d2, c2, p3, d4, c4 = self.dec
        d = _prelu(mu @ d0.T + c0, p1)
        d = _prelu(d @ d2.T + c2, p3)
        recon = _sigmoid(d @ d4.T + c4)
        return recon, mu, new_h
