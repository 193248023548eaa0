"""The mapping interface: one class per mapping, registered by name, with a config class and one YAML.

A mapping learns ŷ = f(x) from one side's rows x (N, P) to the other side's rows y (N, Q) of the same examples
(activations, or SAE codes), on the training split, choosing any hyperparameter on the validation split only; the
stage then measures f on the test split. Rows may be memory-mapped: mappings read them in chunks of `CHUNK` rows.
A `symmetric` mapping (the crosscoder) is fit once on both sides together and predicts either direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch

from sae_ception.alignment.config import MAPPINGS, MappingConfig

__all__ = ["MAPPINGS", "Mapping", "MappingConfig", "Moments", "chunks", "column_means", "moments"]

CHUNK = 8192  # rows read at once from (possibly memory-mapped) activations or codes


def chunks(x_NP: torch.Tensor, rows: int | None = None, columns: torch.Tensor | None = None
           ) -> Iterator[torch.Tensor]:
    """`x_NP` (only `columns`, when given) a block of `rows` rows (default CHUNK) at a time, as float64."""
    rows = rows or CHUNK
    for start in range(0, len(x_NP), rows):
        block = x_NP[start:start + rows]
        yield (block if columns is None else block[:, columns]).double()


def column_means(x_NP: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """(P,) float64 mean of each column (of `columns` only, when given), over chunks of rows. ValueError on no rows."""
    if len(x_NP) == 0:
        raise ValueError("column_means: no rows")
    return sum(c.sum(0) for c in chunks(x_NP, columns=columns)) / len(x_NP)


@dataclass
class Moments:
    """Sufficient statistics of paired rows: means, the centred cross-product Xᶜᵀ Yᶜ and Xᶜᵀ Xᶜ, the total
    squared deviation of each side (float64)."""

    n: int
    mean_x: torch.Tensor  # (P,)
    mean_y: torch.Tensor  # (Q,)
    xty: torch.Tensor  # (P, Q) Σ (x − x̄)ᵀ (y − ȳ)
    xtx: torch.Tensor | None  # (P, P) Σ (x − x̄)ᵀ (x − x̄), when asked for
    ss_x: float  # Σ ||x − x̄||²
    ss_y: float


def moments(x_NP: torch.Tensor, y_NQ: torch.Tensor, with_xtx: bool = False, columns_x: torch.Tensor | None = None,
            columns_y: torch.Tensor | None = None) -> Moments:
    """`Moments` of paired rows (of the given columns only, when given), accumulated over row chunks (memory
    O(P·Q + P²), not O(N)). ValueError when the row counts differ or there are no rows."""
    n = len(x_NP)
    if n != len(y_NQ) or n == 0:
        raise ValueError(f"moments: {n} and {len(y_NQ)} rows; a mapping needs the same examples, at least one")
    mean_x, mean_y = column_means(x_NP, columns_x), column_means(y_NQ, columns_y)
    p, q = len(mean_x), len(mean_y)
    xty = torch.zeros(p, q, dtype=torch.float64)
    xtx = torch.zeros(p, p, dtype=torch.float64) if with_xtx else None
    ss_x = ss_y = 0.0
    for cx, cy in zip(chunks(x_NP, columns=columns_x), chunks(y_NQ, columns=columns_y)):
        cx, cy = cx - mean_x, cy - mean_y
        xty += cx.T @ cy
        if xtx is not None:
            xtx += cx.T @ cx
        ss_x += float((cx ** 2).sum())
        ss_y += float((cy ** 2).sum())
    return Moments(n, mean_x, mean_y, xty, xtx, ss_x, ss_y)


class Mapping:
    """Base of every mapping. Subclasses set `config_class` and implement `fit` and `predict`."""

    config_class = MappingConfig
    symmetric: ClassVar[bool] = False  # fit once on (A, B); predict(x, direction) either way

    def __init__(self, name: str, cfg: MappingConfig):
        self.name = name  # the key of `mapping` this runs as (its YAML's name)
        self.cfg = cfg

    def setting(self, key: str) -> str:
        """`mapping.<name>.<key>`: how a message names one of this mapping's settings."""
        return f"mapping.{self.name}.{key}"

    def fit(self, x_NP: torch.Tensor, y_NQ: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, *, seed: int,
            space: str) -> dict:
        """Learn the map from paired training rows (validation rows only choose hyperparameters). Returns what the
        result records: at least {"parameters": count, "steps": optimiser steps (0 for closed forms),
        "rows": training rows} plus anything chosen (e.g. the ridge penalty)."""
        raise NotImplementedError

    def predict(self, x_NP: torch.Tensor) -> torch.Tensor:
        """ŷ (N, Q) float32 for rows x (N, P), in the target side's raw units."""
        raise NotImplementedError


def predict_in_chunks(fn, x_NP: torch.Tensor) -> torch.Tensor:
    """`fn` applied to `x_NP` a chunk at a time (float64 in, float32 out), concatenated."""
    return torch.cat([fn(c).float() for c in chunks(x_NP)]) if len(x_NP) else torch.zeros(0)
