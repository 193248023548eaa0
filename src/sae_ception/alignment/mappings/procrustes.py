"""Orthogonal Procrustes (Schönemann 1966): the rotation R minimising ||X̃R − Ỹ||_F, where X̃, Ỹ are each side's
rows centred and scaled to unit root-mean-square norm; ŷ = s_y · ((x − x̄)/s_x) R + ȳ.

R = U Vᵀ from the SVD U S Vᵀ of X̃ᵀỸ, the same solution as scipy.linalg.orthogonal_procrustes(X̃, Ỹ) (a test checks
it), computed here from the cross-product accumulated in chunks so memory does not grow with the rows. Widths
may differ: R (P x Q) then has orthonormal rows or columns (the smaller side zero-padded).

On SAE codes the two dictionaries' indices mean nothing to each other, so features are paired first (one to one,
Hungarian, on their training-split correlations: measures.match_features) and the rotation is fit between the
paired features; a target feature left unpaired (dead, or the wider side's surplus) is predicted by its training
mean. The reference (`../shared/reference/cross-model-feature-alignment.md`) fit it on unpaired codes: 0.7% cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_ception.alignment.mapping import (MAPPINGS, Mapping, MappingConfig, column_means, moments,
                                           predict_in_chunks)
from sae_ception.alignment.measures import alive, correlation_matrix, match_features


@dataclass
class ProcrustesConfig(MappingConfig):
    type: str = "procrustes"
    pair_codes: bool = True  # codes: pair features (Hungarian on correlations) before the rotation


def rotation(cross_PQ: torch.Tensor) -> torch.Tensor:
    """The orthogonal (semi-orthogonal when P != Q) R = U Vᵀ maximising tr(Rᵀ M) for M = X̃ᵀỸ (P x Q)."""
    u, _, vt = torch.linalg.svd(cross_PQ, full_matrices=False)
    return u @ vt


@MAPPINGS.register("procrustes")
class Procrustes(Mapping):
    config_class = ProcrustesConfig

    def fit(self, x_NP, y_NQ, x_val, y_val, *, seed, space):
        q = y_NQ.shape[1]
        self.cols_in = torch.arange(x_NP.shape[1])
        self.cols_out = torch.arange(q)
        paired = None
        if space == "codes" and self.cfg.pair_codes:
            match = match_features(correlation_matrix(x_NP, y_NQ), alive(x_NP), alive(y_NQ))
            self.cols_in, self.cols_out = torch.as_tensor(match.rows).long(), torch.as_tensor(match.cols).long()
            paired = len(self.cols_in)
        self.mean_all_y = column_means(y_NQ).float()  # unpaired target features: their training mean
        if len(self.cols_in) == 0:  # nothing alive to pair: the mapping is the mean predictor
            self.rotation = None
            return {"parameters": 0, "steps": 0, "rows": len(x_NP), "paired_features": 0}
        m = moments(x_NP, y_NQ, columns_x=self.cols_in, columns_y=self.cols_out)  # chunked: no copy of all rows
        self.mean_x, self.mean_y = m.mean_x, m.mean_y
        self.scale_x = max(m.ss_x / m.n, 1e-24) ** 0.5  # RMS norm of the centred rows
        self.scale_y = max(m.ss_y / m.n, 1e-24) ** 0.5
        self.rotation = rotation(m.xty / (self.scale_x * self.scale_y))
        fitted = {"parameters": int(self.rotation.numel()), "steps": 0, "rows": m.n}
        return fitted | ({"paired_features": paired} if paired is not None else {})

    def _map(self, x):
        return ((x[:, self.cols_in] - self.mean_x) / self.scale_x) @ self.rotation * self.scale_y + self.mean_y

    def predict(self, x_NP):
        if self.rotation is None:
            return self.mean_all_y.expand(len(x_NP), -1).clone()
        mapped = predict_in_chunks(self._map, x_NP)
        out = self.mean_all_y.expand(len(x_NP), -1).clone()  # paired features come back in the target's order
        out[:, self.cols_out] = mapped
        return out
