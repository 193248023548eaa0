"""How well an SAE fits a set of activations: reconstruction error, explained variance, sparsity, dead latents.

Computed in batches under no_grad with float64 running sums on the SAE's device (one host sync at the end).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows whose squared deviations from their mean sum to at most this share of their squared norms do not vary
# (a constant layer, e.g. a dead ReLU layer): below float32 resolution, so explained variance is undefined.
CONSTANT_ROWS = 1e-12


def explained_variance(sse: float, spread: float, sum_sq: float) -> float:
    """1 − sse / spread, where `sse` is the reconstruction's summed squared error, `spread` the rows' summed
    squared deviations from their per-dim mean and `sum_sq` their summed squares. NaN (undefined) when the
    rows do not vary (spread <= CONSTANT_ROWS · sum_sq): there is no variance to explain, and 1 − 0/0 must not
    read as a perfect fit."""
    if spread <= CONSTANT_ROWS * sum_sq:
        return float("nan")
    return 1.0 - sse / spread


def _batches(sae, acts_ND: Tensor, batch_size: int):
    """Yield (x_BD, codes_BF, recon_BD) on the SAE's device, in the SAE's dtype."""
    param = next(sae.parameters())
    for x_BD in acts_ND.split(batch_size):
        x_BD = x_BD.to(device=param.device, dtype=param.dtype)
        codes_BF = sae.encode(x_BD)
        yield x_BD, codes_BF, sae.decode(codes_BF)


@torch.no_grad()
def reconstruct(sae, acts_ND: Tensor, batch_size: int = 4096) -> Tensor:
    """decode(encode(acts)) in the raw space, returned on the device of `acts_ND`."""
    return torch.cat([recon_BD.to(acts_ND.device) for _, _, recon_BD in _batches(sae, acts_ND, batch_size)])


@torch.no_grad()
def sae_quality(sae, acts_ND: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """mse (raw space, per element), mse_normalized (the SAE's normalised space, what training minimises),
    explained_variance (1 - SSE / sum of squared deviations from the per-dim mean, raw space; NaN when the
    rows do not vary: `explained_variance`), l0, l1, dead_fraction (never fires here) and always_on_fraction
    (fires on every example)."""
    n, d_in = acts_ND.shape
    if n == 0:
        raise ValueError("sae_quality needs at least one activation row")
    device, f64 = next(sae.parameters()).device, torch.float64
    mean_D = (acts_ND.sum(0, dtype=f64) / n).to(device)
    sse, sse_norm, spread, sum_sq, l0, l1 = (torch.zeros((), dtype=f64, device=device) for _ in range(6))
    fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    for x_BD, codes_BF, recon_BD in _batches(sae, acts_ND, batch_size):
        active_BF = codes_BF != 0
        sse += (recon_BD - x_BD).pow(2).sum(dtype=f64)
        sse_norm += (sae.normalize(recon_BD) - sae.normalize(x_BD)).pow(2).sum(dtype=f64)
        spread += (x_BD.to(f64) - mean_D).pow(2).sum()
        sum_sq += x_BD.to(f64).pow(2).sum()
        l0 += active_BF.sum()
        l1 += codes_BF.abs().sum(dtype=f64)
        fired_F += active_BF.sum(0)
    return {
        "mse": (sse / (n * d_in)).item(),
        "mse_normalized": (sse_norm / (n * d_in)).item(),
        "explained_variance": explained_variance(sse.item(), spread.item(), sum_sq.item()),
        "l0": (l0 / n).item(),
        "l1": (l1 / n).item(),
        "dead_fraction": (fired_F == 0).double().mean().item(),
        "always_on_fraction": (fired_F == n).double().mean().item(),
    }
