"""Crosscoders as a mapping (alignment/crosscoder.py): one shared dictionary fit on both models' activations
together, in the L1 form (Lindsey et al. 2024) or the BatchTopK form (Minder et al. 2025). It maps A onto B by
encoding A alone and decoding B's side (and B onto A likewise); beside its predictions it reports each latent's
relative decoder norm (shared vs exclusive) and the cosine between the two decoders of shared latents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from sae_ception.alignment.crosscoder import (SPARSITIES, CrosscoderTraining, latent_classes, relative_decoder_norm,
                                              shared_decoder_cosine, train_crosscoder)
from sae_ception.alignment import mapping as mapping_module
from sae_ception.alignment.mapping import MAPPINGS, Mapping, MappingConfig, predict_in_chunks
from sae_ception.errors import ConfigError, DivergenceError


@dataclass
class CrosscoderConfig(MappingConfig):
    type: str = "crosscoder"
    spaces: List[str] = field(default_factory=lambda: ["activations"])  # activations only: one dictionary of both
    sparsity: str = "batchtopk"  # batchtopk | l1
    d_latent: Optional[int] = None  # shared latents; null: expansion_factor x the wider model's width
    expansion_factor: int = 4
    k: int = 8  # batchtopk: active latents per row on average
    l1_coefficient: float = 0.1  # l1: weight of Σ_j z_j (|d_a,j| + |d_b,j|), rows scaled to unit mean norm
    epochs: int = 50
    batch_size: int = 256
    lr: float = 3e-3

    supported_spaces = ("activations",)

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        if self.sparsity not in SPARSITIES:
            raise ConfigError(f"mapping.{name}.sparsity={self.sparsity!r} is not valid; use one of {', '.join(SPARSITIES)}")
        for key in ("expansion_factor", "k", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mapping.{name}.{key}={getattr(self, key)} must be a positive integer")
        if self.d_latent is not None and self.d_latent < 1:
            raise ConfigError(f"mapping.{name}.d_latent={self.d_latent} must be a positive integer (or null)")
        if not self.lr > 0 or not self.l1_coefficient >= 0:
            raise ConfigError(f"mapping.{name}: lr={self.lr} must be > 0 and l1_coefficient={self.l1_coefficient} >= 0")

    def width(self, width_a: int, width_b: int) -> int:
        """The shared dictionary's latents: d_latent, or expansion_factor x the wider model's width."""
        return self.d_latent or self.expansion_factor * max(width_a, width_b)

    def validate_widths(self, name, width_a, width_b) -> None:
        latents = self.width(width_a, width_b)
        if self.sparsity == "batchtopk" and self.k > latents:
            raise ConfigError(f"mapping.{name}.k={self.k} exceeds its {latents} latents (mapping.{name}.d_latent, or "
                              f"expansion_factor x {max(width_a, width_b)}); give k <= {latents}")


@MAPPINGS.register("crosscoder")
class CrosscoderMapping(Mapping):
    config_class = CrosscoderConfig
    symmetric = True

    def fit_pair(self, x_a_ND: torch.Tensor, x_b_NE: torch.Tensor, *, seed: int) -> dict:
        """Train the crosscoder on paired training rows of both models; returns its budget and diagnostics."""
        cfg = self.cfg
        width = cfg.width(x_a_ND.shape[1], x_b_NE.shape[1])
        settings = CrosscoderTraining(d_latent=width, sparsity=cfg.sparsity, k=cfg.k, l1_coefficient=cfg.l1_coefficient,
                                      epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
        try:
            self.model, stats = train_crosscoder(x_a_ND, x_b_NE, settings, seed=seed)
        except DivergenceError as ex:
            raise DivergenceError(f"{self.setting('lr')}={cfg.lr}: the {self.name} crosscoder diverged ({ex}); lower "
                                  "it") from None
        live_F = self._fired(x_a_ND, x_b_NE)
        rel_F = relative_decoder_norm(self.model.decoder_norms())[live_F]  # a dead latent keeps its init: rel 0.5
        cosines = shared_decoder_cosine(self.model, relative_decoder_norm(self.model.decoder_norms()).masked_fill(
            ~live_F, float("nan")))
        self.relative_norms = rel_F
        return {"parameters": sum(p.numel() for p in self.model.parameters()), "steps": int(stats["steps"]),
                "rows": len(x_a_ND), "d_latent": width, "training": stats, "live_latents": int(live_F.sum()),
                "latent_classes": latent_classes(rel_F),
                "shared_decoder_cosine": None if cosines is None or not len(cosines) else float(cosines.mean())}

    @torch.no_grad()
    def _fired(self, x_a_ND: torch.Tensor, x_b_NE: torch.Tensor) -> torch.Tensor:
        """(F,) bool: the latent fires on some training row (both sides encoded together, as in training)."""
        fired = torch.zeros(self.model.b_enc_F.shape[0], dtype=torch.bool)
        rows = mapping_module.CHUNK
        for start in range(0, len(x_a_ND), rows):
            z = self.model.encode(x_a_ND[start:start + rows].float(), x_b_NE[start:start + rows].float())
            fired |= (z > 0).any(0)
        return fired

    @torch.no_grad()
    def joint_fvu(self, x_a_ND: torch.Tensor, x_b_NE: torch.Tensor) -> dict[str, float]:
        """Fraction of each side's variance unexplained when both sides are encoded together (what the crosscoder
        was trained to do), over rows read in chunks: {"fvu_a", "fvu_b"}; NaN for a side that does not vary."""
        rows, out = mapping_module.CHUNK, {}
        sums = torch.zeros(2, 2, dtype=torch.float64)  # per side: squared error, squared deviation
        means = [mapping_module.column_means(x).float() for x in (x_a_ND, x_b_NE)]
        for start in range(0, len(x_a_ND), rows):
            xa, xb = x_a_ND[start:start + rows].float(), x_b_NE[start:start + rows].float()
            for side, (x, recon, mean) in enumerate(zip((xa, xb), self.model.decode(self.model.encode(xa, xb)),
                                                        means)):
                sums[side, 0] += float(((x - recon) ** 2).sum())
                sums[side, 1] += float(((x - mean) ** 2).sum())
        for side, name in enumerate(("fvu_a", "fvu_b")):
            out[name] = float(sums[side, 0] / sums[side, 1]) if sums[side, 1] > 0 else float("nan")
        return out

    def predict_direction(self, x_NP: torch.Tensor, direction: str) -> torch.Tensor:
        """One side's rows mapped onto the other's (raw units): encode from that side alone, decode the other."""
        return predict_in_chunks(lambda x: self.model.translate(x.float(), direction), x_NP)
