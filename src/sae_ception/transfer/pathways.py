"""Shared pieces of the weight-surgery methods (procrustes_probe, activation_transplant, cascade).

- which of B's hidden units carry the target: `selectivity` (by activation), `cascade_selection` (by weights,
  backwards from the target's output row), `top_units`;
- a linear probe on B's features carried into A's: `fit_probe`, `fit_alignment` (orthogonal Procrustes),
  `carry_probe`;
- `transplant`: the one function that writes B's units into (a copy of) A.

Selection and alignment are pure functions on tensors, so tests can hand-build their cases. Hidden layers are
numbered 0..L-1 from the input; hidden layer l's units are the rows of its Linear (weight (width_l, width_l-1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.transfer.layers import linear_layers


# --- which hidden layers ---------------------------------------------------------------------------------------
def hidden_layer_indices(layers: Optional[Sequence[int]], depth: int) -> list[int]:
    """`layers` (hidden-layer indices, negative from the end; None: every layer) as ascending indices 0..depth-1.
    Assumes they were validated (`check_hidden_layers`)."""
    if layers is None:
        return list(range(depth))
    return sorted({index % depth for index in layers})


def check_hidden_layers(setting: str, layers: Optional[Sequence[int]], sizes: Sequence[int]) -> None:
    """ConfigError (one line) for an empty, out-of-range or repeated list of hidden-layer indices."""
    if layers is None:
        return
    depth = len(sizes)
    example = f"[{depth - 1}] or [-1] (the last), or null for all {depth}"
    if not layers:
        raise ConfigError(f"{setting}=[] names no hidden layer; give indices 0..{depth - 1} (negative from the end), "
                          f"e.g. {example}")
    bad = [index for index in layers if not -depth <= index < depth]
    if bad:
        raise ConfigError(f"{setting}={list(layers)}: {bad[0]} is not a hidden layer of model_a.hidden_sizes="
                          f"{list(sizes)}; use {-depth}..{depth - 1}, e.g. {example}")
    normalised = [index % depth for index in layers]
    if len(set(normalised)) != len(normalised):
        raise ConfigError(f"{setting}={list(layers)} names a hidden layer twice (negative indices count from the end "
                          f"of {depth}); give each layer once")


# --- choosing units -----------------------------------------------------------------------------------------------
def top_units(scores_W: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending, int64) of the k largest scores; k is capped at the number of units, ties go to the lower
    index (a stable sort), so the choice does not depend on the sorting algorithm."""
    order = torch.argsort(scores_W, descending=True, stable=True)
    return order[:max(0, min(int(k), len(scores_W)))].sort().values


def selectivity(target_acts_NW: torch.Tensor, other_acts_MW: torch.Tensor) -> torch.Tensor:
    """Per unit: mean activation on target images minus mean activation on other images (W,)."""
    return target_acts_NW.float().mean(0) - other_acts_MW.float().mean(0)


def cascade_selection(head_row_W: torch.Tensor, hidden_weights: Sequence[torch.Tensor],
                      ratios: Sequence[int]) -> list[torch.Tensor]:
    """B's pathway to one output, followed backwards through the weights (the reference's cascade transplant).

    head_row_W: the output row of the target (width of the last hidden layer); hidden_weights: the weight of each
    hidden layer's Linear, from the first (L tensors (width_l, width_l-1); the first one is not read: the cascade
    stops at the first hidden layer's units); ratios: L numbers, last hidden layer first. The last hidden layer
    keeps its ratios[0] units of largest |head_row|; then, layer by layer towards the input, each kept unit of
    layer l keeps its ratios[i] inputs of largest |weight| in layer l-1, and layer l-1 keeps their union. Each
    ratio is capped at the layer's width. Returns L ascending index tensors, first hidden layer first."""
    depth = len(hidden_weights)
    if len(ratios) != depth:
        raise ValueError(f"cascade_selection: {len(ratios)} ratios for {depth} hidden layers")
    if head_row_W.shape != (hidden_weights[-1].shape[0],):
        raise ValueError("cascade_selection: the head row does not match the last hidden layer's width")
    selected: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)] * depth
    selected[-1] = top_units(head_row_W.detach().abs().cpu(), ratios[0])
    for step in range(1, depth):
        layer = depth - 1 - step  # the layer whose units are chosen now
        reader = hidden_weights[layer + 1].detach().abs().cpu()  # (width_{layer+1}, width_layer)
        chosen = {int(i) for unit in selected[layer + 1] for i in top_units(reader[unit], ratios[step])}
        selected[layer] = torch.tensor(sorted(chosen), dtype=torch.long)
    return selected


# --- a probe carried from B's features into A's -------------------------------------------------------------------
@dataclass
class Probe:
    """A linear score w·h + b on one model's features (positive: the target)."""

    weight: torch.Tensor  # (D,) float64
    intercept: float
    iterations: int  # lbfgs iterations the fit took (the method's steps)


def fit_probe(positives_ND: torch.Tensor, negatives_MD: torch.Tensor, max_iter: int = 1000) -> Probe:
    """scikit-learn's LogisticRegression (lbfgs, its default L2 penalty C=1) of positives against negatives, on
    the features as given (no scaling, so the weight reads raw features)."""
    from sklearn.linear_model import LogisticRegression

    features = torch.cat([positives_ND, negatives_MD]).double().numpy()
    labels = [1] * len(positives_ND) + [0] * len(negatives_MD)
    model = LogisticRegression(solver="lbfgs", max_iter=max_iter).fit(features, labels)
    return Probe(torch.from_numpy(model.coef_[0].copy()), float(model.intercept_[0]), int(model.n_iter_.max()))


@dataclass
class Alignment:
    """(h_B - mean_b) @ rotation ≈ (h_A - mean_a): B's features mapped onto A's (means zero unless centred)."""

    rotation: torch.Tensor  # (D, D) float64, orthogonal
    mean_b: torch.Tensor  # (D,) float64
    mean_a: torch.Tensor  # (D,) float64
    residual: float  # ||(H_B - mean_b) R - (H_A - mean_a)||_F / ||H_A - mean_a||_F on the fitting rows


def fit_alignment(h_b_ND: torch.Tensor, h_a_ND: torch.Tensor, center: bool = False) -> Alignment:
    """The orthogonal R minimising ||H_B R - H_A||_F (scipy.linalg.orthogonal_procrustes) on paired features of
    the same images; with `center`, both are first shifted by their own mean over these rows."""
    from scipy.linalg import orthogonal_procrustes

    if h_b_ND.shape != h_a_ND.shape:
        raise ValueError(f"fit_alignment: features of shapes {tuple(h_b_ND.shape)} and {tuple(h_a_ND.shape)}")
    h_b, h_a = h_b_ND.double(), h_a_ND.double()
    zeros = torch.zeros(h_b.shape[1], dtype=torch.float64)
    mean_b, mean_a = (h_b.mean(0), h_a.mean(0)) if center else (zeros, zeros.clone())
    b, a = h_b - mean_b, h_a - mean_a
    rotation, _ = orthogonal_procrustes(b.numpy(), a.numpy())
    rotation = torch.from_numpy(rotation)
    scale = float(torch.linalg.norm(a))
    residual = float(torch.linalg.norm(b @ rotation - a)) / scale if scale > 0 else float("nan")  # A all zero: undefined
    return Alignment(rotation, mean_b, mean_a, residual)


CARRY_CHOICES = ("transpose", "reference")


def carry_probe(probe: Probe, alignment: Alignment, carry: str = "transpose") -> tuple[torch.Tensor, float]:
    """The probe's (weight, intercept) on A's features.

    From (h_B - μ_B) R ≈ h_A - μ_A and R orthogonal: h_B ≈ (h_A - μ_A) Rᵀ + μ_B, so
    w·h_B + b ≈ (Rᵀw)·h_A + (b + w·μ_B - (Rᵀw)·μ_A): weight Rᵀw, intercept b + w·μ_B - (Rᵀw)·μ_A (the means are 0
    without centring, leaving b). `carry="reference"` uses R w instead of Rᵀw (the reference's `R @ W4`, which
    applies the inverse rotation), with the same intercept formula."""
    if carry not in CARRY_CHOICES:
        raise ValueError(f"carry_probe: carry={carry!r}; use one of {', '.join(CARRY_CHOICES)}")
    rotation = alignment.rotation
    weight_a = rotation.T @ probe.weight if carry == "transpose" else rotation @ probe.weight
    intercept = probe.intercept + float(probe.weight @ alignment.mean_b) - float(weight_a @ alignment.mean_a)
    return weight_a, intercept


# --- writing B's units into A -------------------------------------------------------------------------------------
@torch.no_grad()
def transplant(edited_a: nn.Module, model_b: nn.Module, selected: Sequence[torch.Tensor], target: int,
               copy_head_row: bool, isolate: bool = False) -> None:
    """Write B's units into `edited_a` in place: for each hidden layer l and each unit u of selected[l], A's
    incoming weight row and bias of u := B's; with copy_head_row, A's output row `target` (weights and bias) :=
    B's. Both models must have the same architecture; `selected` has one index tensor (possibly empty) per hidden
    layer.

    Without `isolate` nothing else is written: a transplanted unit also reads A's units outside the pathway (with
    B's weights), and A's next layer keeps reading it with A's weights. With `isolate` the pathway is cut out as
    a circuit of its own: a transplanted unit of layer l > 0 reads only the transplanted units of layer l-1
    (its other incoming weights := 0), A's units outside the pathway no longer read it (their weights from it,
    and the output rows other than `target`, := 0), and the copied target row reads only the last layer's
    transplanted units. The reference's "copy entire pathways as connected units" can be read either way."""
    layers_a, layers_b = linear_layers(edited_a), linear_layers(model_b, "model_b.name")
    if len(selected) != len(layers_a) - 1:
        raise ValueError(f"transplant: {len(selected)} unit lists for {len(layers_a) - 1} hidden layers")
    for layer_a, layer_b in zip(layers_a, layers_b):
        if layer_a.weight.shape != layer_b.weight.shape:
            raise ValueError("transplant: A and B have different architectures")
    units = [torch.as_tensor(u, dtype=torch.long).cpu() for u in selected]
    for layer_a, layer_b, chosen in zip(layers_a[:-1], layers_b[:-1], units):
        if chosen.numel():
            _copy_rows(layer_a, layer_b, chosen)
    if copy_head_row:
        _copy_rows(layers_a[-1], layers_b[-1], torch.tensor([target]))
    if not isolate:
        return
    readers = [*units[1:], torch.tensor([target]) if copy_head_row else torch.zeros(0, dtype=torch.long)]
    for below, (reader_units, layer_a) in enumerate(zip(readers, layers_a[1:])):
        weight = layer_a.weight  # (width_{below+1} or classes, width_below)
        inside = torch.zeros(weight.shape[0], dtype=torch.bool)
        inside[reader_units] = True
        outside_below = torch.ones(weight.shape[1], dtype=torch.bool)
        outside_below[units[below]] = False
        weight[inside.nonzero().flatten()[:, None].to(weight.device), outside_below.nonzero().flatten()[None, :]
               .to(weight.device)] = 0.0  # pathway units read only pathway units
        weight[(~inside).nonzero().flatten()[:, None].to(weight.device), units[below][None, :]
               .to(weight.device)] = 0.0  # the rest of A no longer reads the pathway


def _copy_rows(layer_a: nn.Linear, layer_b: nn.Linear, rows: torch.Tensor) -> None:
    weight, bias = layer_a.weight, layer_a.bias
    source_rows = rows.to(layer_b.weight.device)
    weight[rows.to(weight.device)] = layer_b.weight[source_rows].to(weight.device, weight.dtype)
    bias[rows.to(bias.device)] = layer_b.bias[source_rows].to(bias.device, bias.dtype)
