"""The mathematics of aligning two models' concept spaces (`../shared/reference/network-surgery-deep-dive.md`,
"Mathematical Foundations"): orthogonal Procrustes between class centroids (pathways.fit_alignment, scipy), the
free directions of a concept space (SVD), a learned map between spaces of different widths, and the similarity of
two representations (linear CKA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def linear_cka(x_NP: torch.Tensor, y_NQ: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same N inputs (Kornblith et al. 2019,
    "Similarity of Neural Network Representations Revisited", eq. for linear kernels):

        CKA = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F),   Xᶜ, Yᶜ: columns centred over the N rows

    in [0, 1]; 1 when Y is X up to an orthogonal map and a scale; invariant to isotropic scaling and orthogonal
    maps, not to other invertible linear maps. Widths P and Q may differ. NaN when either side does not vary.
    Computed in float64 from the feature-space products (P x P, Q x Q, Q x P)."""
    if len(x_NP) != len(y_NQ):
        raise ValueError(f"linear_cka: {len(x_NP)} and {len(y_NQ)} rows; give both models the same inputs")
    if len(x_NP) == 0 or bool((x_NP == x_NP[:1]).all()) or bool((y_NQ == y_NQ[:1]).all()):
        return float("nan")  # a side that does not vary (decided on the raw rows: centring leaves rounding residue)
    x = x_NP.double() - x_NP.double().mean(0)
    y = y_NQ.double() - y_NQ.double().mean(0)
    cross = torch.linalg.norm(y.T @ x) ** 2
    norms = torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y)
    return float(cross / norms) if float(norms) > 0 else float("nan")


@dataclass
class FreeSpace:
    """Orthonormal directions of a concept space that the used classes' codes hardly occupy."""

    directions_CK: torch.Tensor  # (C, k) float64, orthonormal columns: the k least-used directions
    singular_values: torch.Tensor  # (min(C, N),) of the used codes, descending
    energy: float  # fraction of the used codes' squared norm along these directions (0: exactly free)

    def project(self, v_C: torch.Tensor) -> torch.Tensor:
        """F Fᵀ v: the part of v (C,) or (N, C) in the free space."""
        f = self.directions_CK.to(v_C.dtype)
        return (v_C @ f) @ f.T


def free_directions(used_codes_NC: torch.Tensor, k: int) -> FreeSpace:
    """The k left singular vectors of the used codes' matrix Uᵀ (C x N) with the smallest singular values
    (the deep dive's `U, S, V = torch.svd(used_concepts_A.T)`, `free_directions = U[:, -k:]`), by torch's full
    SVD in float64. Directions beyond the codes' rank have singular value 0: the used codes have no component
    along them, so adding anything along them leaves each used code's projection on the used span unchanged.
    ValueError when k is not in 1..C."""
    n, c = used_codes_NC.shape
    if not 1 <= k <= c:
        raise ValueError(f"free_directions: k={k} must be in 1..{c} (the concept dimension)")
    # the full C x C left factor, without the N x N right one when N >= C (its cost would grow with N²)
    u, s, _ = torch.linalg.svd(used_codes_NC.double().T, full_matrices=n < c)
    directions = u[:, c - k:]
    total = float(used_codes_NC.double().pow(2).sum())
    along = float((used_codes_NC.double() @ directions).pow(2).sum())
    return FreeSpace(directions, s, along / total if total > 0 else 0.0)


class FeatureAligner(nn.Module):
    """Φ: B's penultimate features (d_B) -> A's (d_A), the deep dive's "Neural Alignment Network":
    Φ(h) = ReLU(W₂ ReLU(W₁ h + b₁) + b₂), W₁: d_B -> hidden, W₂: hidden -> d_A (the final ReLU keeps Φ(h) in the
    non-negative orthant of A's post-ReLU features; `final_relu=False` drops it)."""

    def __init__(self, d_b: int, d_a: int, hidden: int = 64, final_relu: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_b, hidden), nn.ReLU(), nn.Linear(hidden, d_a))
        self.final_relu = final_relu

    def forward(self, h_b: torch.Tensor) -> torch.Tensor:
        out = self.net(h_b)
        return torch.relu(out) if self.final_relu else out


def fit_aligner(aligner: FeatureAligner, h_b_ND: torch.Tensor, target_NC: torch.Tensor,
                into: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float, batch_size: int,
                generator: torch.Generator, diverged: Callable[[str], Exception] = ValueError) -> float:
    """Train Φ (Adam, `steps` steps of `batch_size` rows drawn with `generator`) to minimise
    mean ‖target − into(Φ(h_B))‖² over paired rows of the same images: the deep dive's L_align with `into` = A's
    (frozen) SAE encoder and `target` = A's codes E_A(h_A). Returns the relative residual
    ‖T − into(Φ(H_B))‖_F / ‖T‖_F on all the rows after training (NaN when T is all zero). A non-finite loss, an
    update that overflows or a non-finite weight raises `diverged(how)` (the caller's one-line error)."""
    from sae_ception.transfer.finetune import step_or_diverge

    optimiser = torch.optim.Adam(aligner.parameters(), lr=lr)
    n = len(h_b_ND)
    aligner.train()
    for step in range(1, steps + 1):
        rows = torch.randint(n, (min(batch_size, n),), generator=generator)
        loss = (into(aligner(h_b_ND[rows])) - target_NC[rows]).pow(2).sum(1).mean()
        if not torch.isfinite(loss):
            raise diverged(f"at step {step} (loss {float(loss.detach())})")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        step_or_diverge(optimiser, lambda: diverged(f"at step {step} (the update overflows)"))
    aligner.eval()
    if not all(bool(torch.isfinite(p).all()) for p in aligner.parameters()):
        raise diverged("(a weight is not finite after the last step)")
    with torch.no_grad():
        error = float(torch.linalg.norm(into(aligner(h_b_ND)) - target_NC))
        scale = float(torch.linalg.norm(target_NC))
        return error / scale if scale > 0 else float("nan")
