"""The concept editor that the SAE-based methods insert into a copy of A, between its last hidden layer and its head:

    z  = E_A(h)                          A's SAE codes of the penultimate features h (N, d_A)
    p  = gate(z)                         (N,) in [0, 1]: how much this input is taken for the target
    z' = z + p · injection(z)            the edit, in A's concept space
    hₑ = D_A(z')                          back to features
    h' = blend(h, hₑ, p)                 what the head reads

Each part is one small module, so the reference's methods are compositions (`../shared/reference/
network-surgery-deep-dive.md` "Mathematical Foundations", concept-injection-framework.md methods 8-12):
- gates: `ConstantGate` (every input: p = 1), `LearnedGate` (the learned detector: c -> 16 -> 1, sigmoid),
  `SpatialGate` (max over anchors of exp(−‖z − μ_d‖ / σ)), `MixedGate` (β spatial + (1 − β) learned);
- injections: `ConstantInjection` (γ v), `SelectedInjection` (γ w_i on chosen concepts), `FreeSpaceInjection`
  (γ F Fᵀ v), `SpatialInjection` (γ [a (t + δ − z) + b F Fᵀ (t + δ − z)]);
- blends: `NoBlend` (h' = hₑ), `LearnedBlend` (ρ = σ(w): h' = ρ h + (1 − ρ) hₑ), `GatedBlend`
  (r = clamp(σ(w) + 1 − p, 0, 1): h' = r h + (1 − r) hₑ, the preserved injection's), `AdaptiveBlend`
  (b = p σ(w): h' = (1 − b) h + b hₑ, more of the edit where the gate is confident).

The SAE inside is frozen; the edited model carries it (its weights count as parameters added)."""

from __future__ import annotations

import torch
from torch import nn

from sae_ception.sae import SparseAutoencoder


def _buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    module.register_buffer(name, value.detach().float().clone())


# --- gates: z (N, C) -> p (N,) ----------------------------------------------------------------------------------
class ConstantGate(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_ones(len(z))


class LearnedGate(nn.Module):
    """p(target | z) = σ(w₂ᵀ ReLU(W₁ z + b₁) + b₂), hidden width 16 (the deep dive's p_learned)."""

    def __init__(self, c: int, hidden: int = 16, bias: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[2].bias.fill_(bias)  # start mostly closed (negative) or open

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).squeeze(1)


class SpatialGate(nn.Module):
    """p_spatial(z) = max_d exp(−‖z − μ_d‖₂ / σ) over the anchors μ_d (M, C) (the deep dive's spatial detection,
    σ = 5 there)."""

    def __init__(self, anchors_MC: torch.Tensor, sigma: float):
        super().__init__()
        _buffer(self, "anchors", anchors_MC)
        self.sigma = float(sigma)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(z, self.anchors) / self.sigma).max(1).values


class MixedGate(nn.Module):
    """p = β p_spatial + (1 − β) p_learned (the deep dive's combined confidence, β = 0.4)."""

    def __init__(self, spatial: SpatialGate, learned: LearnedGate, beta: float):
        super().__init__()
        self.spatial, self.learned, self.beta = spatial, learned, float(beta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.beta * self.spatial(z) + (1 - self.beta) * self.learned(z)


# --- injections: z (N, C) -> Δz (N, C) --------------------------------------------------------------------------
class _Strength(nn.Module):
    def __init__(self, strength: float, learn: bool):
        super().__init__()
        value = torch.tensor(float(strength))
        if learn:
            self.strength = nn.Parameter(value)
        else:
            self.register_buffer("strength", value)


class ConstantInjection(_Strength):
    """γ v: one vector (C,) added to every code (the reference's basic concept injection)."""

    def __init__(self, vector_C: torch.Tensor, strength: float = 1.0, learn_strength: bool = False):
        super().__init__(strength, learn_strength)
        _buffer(self, "vector", vector_C)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.strength * self.vector).expand_as(z)


class SelectedInjection(_Strength):
    """γ Σᵢ wᵢ e_{cᵢ}: learnable weights wᵢ (start `weight_init`) on chosen concepts cᵢ (the preserved injection's
    "distinctive concepts")."""

    def __init__(self, c: int, concepts: torch.Tensor, strength: float = 1.0, weight_init: float = 0.1):
        super().__init__(strength, learn=False)
        _buffer(self, "mask", torch.zeros(c).index_fill_(0, concepts.long(), 1.0))
        self.weights = nn.Parameter(torch.full((c,), float(weight_init)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.strength * self.weights * self.mask).expand_as(z)


class FreeSpaceInjection(_Strength):
    """γ F Fᵀ v = γ Σᵢ αᵢ F[:, i] with α = Fᵀ v: v only along the free directions F (C, k) (the deep dive's
    non-interfering injection)."""

    def __init__(self, vector_C: torch.Tensor, directions_CK: torch.Tensor, strength: float = 1.0,
                 learn_strength: bool = True):
        super().__init__(strength, learn_strength)
        f = directions_CK.double()
        _buffer(self, "projected", (f @ (f.T @ vector_C.double())))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.strength * self.projected).expand_as(z)


class SpatialInjection(_Strength):
    """γ [a (t + δ − z) + b F Fᵀ (t + δ − z)]: towards the target's position t (C,) (learnable offset δ, from 0),
    directly (weight a) and within the free space F (weight b) (the reference's aligned spatial transfer:
    0.7 direct + 0.3 free)."""

    def __init__(self, position_C: torch.Tensor, directions_CK: torch.Tensor, direct: float, free: float,
                 strength: float = 1.0, learn_position: bool = True):
        super().__init__(strength, learn=True)
        _buffer(self, "position", position_C)
        _buffer(self, "directions", directions_CK)
        self.offset = nn.Parameter(torch.zeros_like(self.position), requires_grad=learn_position)
        self.direct, self.free = float(direct), float(free)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        towards = self.position + self.offset - z
        free = (towards @ self.directions) @ self.directions.T
        return self.strength * (self.direct * towards + self.free * free)


# --- blends: (h, hₑ, p) -> h' -----------------------------------------------------------------------------------
class NoBlend(nn.Module):
    def forward(self, h, h_e, p):
        return h_e


class _Weight(nn.Module):
    def __init__(self, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(init)))


class LearnedBlend(_Weight):
    """ρ = σ(w): h' = ρ h + (1 − ρ) hₑ (the deep dive's preservation blending)."""

    def forward(self, h, h_e, p):
        rho = torch.sigmoid(self.weight)
        return rho * h + (1 - rho) * h_e


class GatedBlend(_Weight):
    """r = clamp(σ(w) + (1 − p), 0, 1): h' = r h + (1 − r) hₑ (the reference's preserved injection, whose ratio can
    exceed 1: clamped here)."""

    def forward(self, h, h_e, p):
        ratio = (torch.sigmoid(self.weight) + (1 - p)).clamp(0, 1)[:, None]
        return ratio * h + (1 - ratio) * h_e


class AdaptiveBlend(_Weight):
    """b = p σ(w): h' = (1 − b) h + b hₑ: the edit only where the gate fires, scaled by a learned σ(w)."""

    def forward(self, h, h_e, p):
        b = (p * torch.sigmoid(self.weight))[:, None]
        return (1 - b) * h + b * h_e


class ConceptEditor(nn.Module):
    """h (N, d_A) -> h' (N, d_A) (module docstring). `sae` is A's SAE (frozen here); `last_gate` holds the gate of
    the latest forward pass (N,), for the confidence term of the training loss."""

    def __init__(self, sae: SparseAutoencoder, gate: nn.Module, injection: nn.Module, blend: nn.Module):
        super().__init__()
        self.sae, self.gate, self.injection, self.blend = sae, gate, injection, blend
        for param in self.sae.parameters():
            param.requires_grad_(False)
        self.last_gate: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.sae.encode(h)
        p = self.gate(z)
        self.last_gate = p
        h_e = self.sae.decode(z + p[:, None] * self.injection(z))
        return self.blend(h, h_e.to(h.dtype), p)


def attach(model: nn.Module, editor: ConceptEditor) -> nn.Module:
    """Insert `editor` after the last hidden block of an MLP classifier (models/mlp.py), in place: the head then
    reads the edited features. The model's own parameters keep their names, so the edit's count of changed
    parameters still compares them with A's; the editor's are added (`blocks.<L>.<i>.*`)."""
    model.blocks[-1].append(editor)
    return model


def editor_of(model: nn.Module) -> ConceptEditor:
    return next(m for m in model.blocks[-1] if isinstance(m, ConceptEditor))
