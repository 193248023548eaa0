"""The reference's "hypernetwork" (`../shared/reference/cross-model-feature-alignment.md`): a 3-layer MLP with
LayerNorm and Dropout, trained with a multi-objective loss

    L = w_mse · MSE(ŷ, y) + w_cos · (1 − mean_i cos(ŷ_i, y_i)) + w_corr · mean_jk (C(ŷ)_jk − C(y)_jk)²
        + w_sparsity · ((mean_i |ŷ_i|₁ − mean_i |y_i|₁) / mean_i |y_i|₁)²

(C: the batch's feature-feature Pearson correlation matrix over `correlation_features` target features drawn
afresh each step, all of them when there are fewer: "correlation preservation", whose cost grows with the square of
the width, so 1,536 codes cost 36x more than 256 per step; the last term matches
the codes' L1 sparsity), every term on target rows divided by one scalar (their training RMS norm), so the loss is
the reference's whatever the units. The network reads each input feature standardised (training mean and standard
deviation) and writes each target feature standardised (ŷ = out · std_y + mean_y, a fixed affine output layer):
without that, on very sparse codes (MiniLM word codes, under 1% active) it stayed at the mean predictor in our
trials. Predicted codes are clipped at 0 (SAE codes are non-negative), on predictions only: a ReLU output layer
trained from scratch leaves most sparse targets dead (no gradient reaches a unit whose output is 0).
The kept weights are those of the epoch with the lowest validation loss (selection on validation data only).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from sae_ception.alignment.mapping import MAPPINGS, Mapping, MappingConfig, chunks, moments, predict_in_chunks
from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.utils.batching import shuffled_batches


@dataclass
class MLPMappingConfig(MappingConfig):
    type: str = "mlp"
    hidden: int = 512  # width of the two hidden layers
    dropout: float = 0.1
    clip_codes: bool = True  # codes: predictions clipped at 0 (the network's output layer itself is linear)
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    correlation_weight: float = 0.1
    correlation_features: int = 256  # target features in each step's correlation term (sampled per step)
    sparsity_weight: float = 0.1
    epochs: int = 100
    max_steps: int = 3000  # optimiser steps at most (a large dataset stops before its epochs)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        for key in ("hidden", "epochs", "max_steps", "batch_size", "correlation_features"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mapping.{name}.{key}={getattr(self, key)} must be a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"mapping.{name}.dropout={self.dropout} must be in [0, 1)")
        for key in ("mse_weight", "cosine_weight", "correlation_weight", "sparsity_weight", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"mapping.{name}.{key}={getattr(self, key)} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"mapping.{name}.lr={self.lr} must be > 0")
        if self.mse_weight + self.cosine_weight + self.correlation_weight + self.sparsity_weight == 0:
            raise ConfigError(f"mapping.{name}: every loss weight is 0; give mse_weight > 0 (or another term)")


def hypernetwork(p: int, q: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear → LayerNorm → ReLU → Dropout, twice, then Linear."""
    return nn.Sequential(nn.Linear(p, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, q))


def _correlations(z_BQ: torch.Tensor) -> torch.Tensor:
    z = z_BQ - z_BQ.mean(0)
    z = z / (z.norm(dim=0) + 1e-8)
    return z.T @ z


def loss_terms(pred_BQ: torch.Tensor, true_BQ: torch.Tensor, features: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """The four terms of the reference's multi-objective loss on one batch (see the module docstring); the
    correlation term over the target features `features` (None: all)."""
    l1_true = true_BQ.abs().sum(1).mean()
    pred_c, true_c = (pred_BQ, true_BQ) if features is None else (pred_BQ[:, features], true_BQ[:, features])
    return {"mse": F.mse_loss(pred_BQ, true_BQ, reduction="sum") / len(true_BQ),
            "cosine": 1 - F.cosine_similarity(pred_BQ, true_BQ, dim=1, eps=1e-8).mean(),
            "correlation": ((_correlations(pred_c) - _correlations(true_c)) ** 2).mean(),
            "sparsity": ((pred_BQ.abs().sum(1).mean() - l1_true) / (l1_true + 1e-8)) ** 2}


def _stds(x_NP: torch.Tensor, mean_P: torch.Tensor) -> torch.Tensor:
    """(P,) float32 standard deviation of each column over chunks of rows; 1 for a column that does not vary."""
    squares = sum(((c - mean_P) ** 2).sum(0) for c in chunks(x_NP))
    std = (squares / len(x_NP)).sqrt().float()
    return torch.where(std > 1e-8, std, torch.ones_like(std))


@MAPPINGS.register("mlp")
class MLPMapping(Mapping):
    config_class = MLPMappingConfig

    def _loss(self, pred, true, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg, q = self.cfg, true.shape[1]
        features = None
        if q > cfg.correlation_features:  # validation (no generator): the first features, the same every epoch
            features = (torch.randperm(q, generator=generator)[:cfg.correlation_features] if generator is not None
                        else torch.arange(cfg.correlation_features))
        terms = loss_terms(pred, true, features)
        return (cfg.mse_weight * terms["mse"] + cfg.cosine_weight * terms["cosine"]
                + cfg.correlation_weight * terms["correlation"] + cfg.sparsity_weight * terms["sparsity"])

    def fit(self, x_NP, y_NQ, x_val, y_val, *, seed, space):
        cfg = self.cfg
        m = moments(x_NP, y_NQ)
        self.mean_x, self.std_x = m.mean_x.float(), _stds(x_NP, m.mean_x)
        self.mean_y, self.std_y = m.mean_y.float(), _stds(y_NQ, m.mean_y)
        self.scale_y = float(max(m.ss_y / m.n, 1e-24) ** 0.5)
        self.clip = space == "codes" and cfg.clip_codes
        torch.manual_seed(seed)
        self.net = hypernetwork(x_NP.shape[1], y_NQ.shape[1], cfg.hidden, cfg.dropout)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best, best_state, best_epoch, steps, history = float("inf"), None, 0, 0, []
        for epoch in range(cfg.epochs):
            if steps >= cfg.max_steps:
                break
            self.net.train()
            for rows in shuffled_batches(len(x_NP), cfg.batch_size, generator):
                if steps >= cfg.max_steps:
                    break
                loss = self._loss(self._forward(x_NP[rows]), y_NQ[rows].float() / self.scale_y, generator)
                if not torch.isfinite(loss):
                    raise DivergenceError(f"{self.setting('lr')}={cfg.lr}: the {self.name} mapping diverged at step "
                                          f"{steps} (loss {loss.item()}); lower it")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
            val = self._validation_loss(x_val, y_val) if len(x_val) else loss.item()
            history.append(val)
            if val < best:
                best, best_epoch = val, epoch
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        if best_state is None:  # no epoch ended with a finite validation loss: the last step blew the weights up
            raise DivergenceError(f"{self.setting('lr')}={cfg.lr}: the {self.name} mapping diverged (validation loss "
                                  f"{history[-1]} after step {steps}); lower it")
        self.net.load_state_dict(best_state)
        self.net.eval()
        return {"parameters": sum(p.numel() for p in self.net.parameters()), "steps": steps, "rows": m.n,
                "kept_epoch": best_epoch, "validation_loss": history}

    def _forward(self, x_BP: torch.Tensor) -> torch.Tensor:
        """The prediction in target units / scale_y, from raw source rows."""
        out = self.net((x_BP.float() - self.mean_x) / self.std_x)
        return (out * self.std_y + self.mean_y) / self.scale_y

    @torch.no_grad()
    def _validation_loss(self, x_val, y_val) -> float:
        self.net.eval()
        total, count = 0.0, 0
        for start in range(0, len(x_val), self.cfg.batch_size):
            y = y_val[start:start + self.cfg.batch_size].float() / self.scale_y
            total += float(self._loss(self._forward(x_val[start:start + self.cfg.batch_size]), y)) * len(y)
            count += len(y)
        return total / count

    @torch.no_grad()
    def predict(self, x_NP):
        pred = predict_in_chunks(lambda x: self._forward(x) * self.scale_y, x_NP)
        return pred.clamp_min(0) if self.clip else pred
