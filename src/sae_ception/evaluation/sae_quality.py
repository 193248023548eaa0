"""How well an SAE fits a set of activations: reconstruction error, explained variance, sparsity, dead latents.

Computed in batches under no_grad with float64 running sums on the SAE's device (one host sync at the end).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae_ception.utils.batching import code_batch

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


class QualitySums:
    """Running float64 sums of `sae_quality` over batches (`update`), on the SAE's device; `result()` reads them
    once. `mean_D` [d_in]: the rows' per-dim mean (a first pass), so the spread needs no one-pass cancellation."""

    def __init__(self, sae, mean_D: Tensor):
        self.sae, self.n = sae, 0
        device, f64 = next(sae.parameters()).device, torch.float64
        self.mean_D = mean_D.to(device=device, dtype=f64)
        self.sse, self.sse_norm, self.spread, self.sum_sq, self.l0, self.l1 = (
            torch.zeros((), dtype=f64, device=device) for _ in range(6))
        self.fired_F = torch.zeros(sae.d_sae, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, x_BD: Tensor, codes_BF: Tensor) -> None:
        """Add a batch: raw rows `x_BD` and their codes `codes_BF` (both on the SAE's device, its dtype)."""
        recon_BD, f64 = self.sae.decode(codes_BF), torch.float64
        active_BF = codes_BF != 0
        self.sse += (recon_BD - x_BD).pow(2).sum(dtype=f64)
        self.sse_norm += (self.sae.normalize(recon_BD) - self.sae.normalize(x_BD)).pow(2).sum(dtype=f64)
        self.spread += (x_BD.to(f64) - self.mean_D).pow(2).sum()
        self.sum_sq += x_BD.to(f64).pow(2).sum()
        self.l0 += active_BF.sum()
        self.l1 += codes_BF.abs().sum(dtype=f64)
        self.fired_F += active_BF.sum(0)
        self.n += len(x_BD)

    def result(self) -> dict[str, float]:
        n, d_in = self.n, len(self.mean_D)
        return {
            "mse": (self.sse / (n * d_in)).item(),
            "mse_normalized": (self.sse_norm / (n * d_in)).item(),
            "explained_variance": explained_variance(self.sse.item(), self.spread.item(), self.sum_sq.item()),
            "l0": (self.l0 / n).item(),
            "l1": (self.l1 / n).item(),
            "dead_fraction": (self.fired_F == 0).double().mean().item(),
            "always_on_fraction": (self.fired_F == n).double().mean().item(),
        }


def row_mean(acts_ND: Tensor, batch_size: int = 65536) -> Tensor:
    """Per-dim mean [d_in] in float64, summed a block at a time (a memory-mapped matrix is never copied whole)."""
    total = sum((block.sum(0, dtype=torch.float64) for block in acts_ND.split(batch_size)),
                torch.zeros(acts_ND.shape[1], dtype=torch.float64, device=acts_ND.device))
    return total / len(acts_ND)


@torch.no_grad()
def sae_quality(sae, acts_ND: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """mse (raw space, per element), mse_normalized (the SAE's normalised space, what training minimises),
    explained_variance (1 - SSE / sum of squared deviations from the per-dim mean, raw space; NaN when the
    rows do not vary: `explained_variance`), l0, l1, dead_fraction (never fires here) and always_on_fraction
    (fires on every example). Batches hold at most `batch_size` rows and `CODE_BUDGET` code values (`code_batch`)."""
    if len(acts_ND) == 0:
        raise ValueError("sae_quality needs at least one activation row")
    param, sums = next(sae.parameters()), QualitySums(sae, row_mean(acts_ND))
    for x_BD in acts_ND.split(code_batch(batch_size, sae.d_sae)):
        x_BD = x_BD.to(device=param.device, dtype=param.dtype)
        sums.update(x_BD, sae.encode(x_BD))
    return sums.result()
