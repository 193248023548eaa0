"""Affine map by ridge regression: ŷ = (x − x̄) W + ȳ, W = (XᶜᵀXᶜ + λI)⁻¹ XᶜᵀYᶜ (Hoerl & Kennard 1970), the
closed form scikit-learn's Ridge(solver="cholesky") solves, here from cross-products accumulated in chunks (memory
O(P² + P·Q), not O(N)). The penalty λ = α · tr(XᶜᵀXᶜ)/P (α relative to the mean variance of x, so one grid
serves activations and codes of any scale) is chosen from `alphas` by the validation split's squared error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import scipy.linalg
import torch

from sae_ception.alignment.mapping import MAPPINGS, Mapping, MappingConfig, chunks, moments, predict_in_chunks
from sae_ception.errors import ConfigError


@dataclass
class AffineConfig(MappingConfig):
    type: str = "affine"
    alphas: List[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])  # relative penalties

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ConfigError(f"mapping.{name}.alphas={list(self.alphas)} must be penalties > 0, e.g. [0.01,0.1,1]")


def ridge_weights(xtx_PP: torch.Tensor, xty_PQ: torch.Tensor, penalty: float) -> torch.Tensor:
    """W (P x Q) solving (XᶜᵀXᶜ + penalty·I) W = XᶜᵀYᶜ (Cholesky: the matrix is symmetric positive definite)."""
    system = xtx_PP.numpy() + penalty * torch.eye(len(xtx_PP), dtype=torch.float64).numpy()
    return torch.from_numpy(scipy.linalg.solve(system, xty_PQ.numpy(), assume_a="pos"))


@MAPPINGS.register("affine")
class Affine(Mapping):
    config_class = AffineConfig

    def fit(self, x_NP, y_NQ, x_val, y_val, *, seed, space):
        m = moments(x_NP, y_NQ, with_xtx=True)
        self.mean_x, self.mean_y = m.mean_x, m.mean_y
        mean_variance = max(float(torch.trace(m.xtx)) / m.xtx.shape[0], 1e-12)
        errors = {}
        for alpha in self.cfg.alphas:
            self.weights = ridge_weights(m.xtx, m.xty, alpha * mean_variance)
            errors[alpha] = sum(float(((self._map(cx) - cy) ** 2).sum()) for cx, cy in zip(chunks(x_val), chunks(y_val)))
        best = min(errors, key=errors.get) if len(x_val) else self.cfg.alphas[len(self.cfg.alphas) // 2]
        self.weights = ridge_weights(m.xtx, m.xty, best * mean_variance)
        return {"parameters": int(self.weights.numel() + len(self.mean_y)), "steps": 0, "rows": m.n, "alpha": best,
                "validation_sse": {str(a): e for a, e in errors.items()}}

    def _map(self, x):
        return (x - self.mean_x) @ self.weights + self.mean_y

    def predict(self, x_NP):
        return predict_in_chunks(self._map, x_NP)
