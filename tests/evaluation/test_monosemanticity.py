"""CSI and U against hand-computed cases, including the edges the issue names."""

import math

import pytest
import torch

from sae_ception.evaluation.monosemanticity import (
    class_selectivity,
    monosemanticity_metrics,
    uncertainty_coefficient,
)

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_perfectly_selective_unit_has_csi_1_and_u_1():
    acts = torch.tensor([[3.0], [5.0], [0.0], [0.0], [0.0], [0.0]])  # fires only for class 0
    assert class_selectivity(acts, LABELS).item() == pytest.approx(1.0)
    assert uncertainty_coefficient(acts, LABELS).item() == pytest.approx(1.0)


def test_hand_computed_csi():
    # class means 4, 1, 1 -> mu_max 4, mu_rest 1 -> (4 - 1) / (4 + 1) = 0.6
    acts = torch.tensor([[4.0], [4.0], [1.0], [1.0], [0.0], [2.0]])
    assert class_selectivity(acts, LABELS).item() == pytest.approx(0.6)


def test_hand_computed_u():
    # fires on both class-0 examples and one class-1 example: p(fire) = 1/2
    acts = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    h_fire = math.log(2)
    h_given = (2 / 6) * (math.log(2))  # only class 1 is uncertain (1/2), with weight 2/6
    assert uncertainty_coefficient(acts, LABELS).item() == pytest.approx((h_fire - h_given) / h_fire, rel=1e-6)


def test_unselective_unit():
    acts = torch.ones(6, 1) * torch.tensor([[1.0], [0.0]]).repeat(3, 1)  # fires on every other example
    assert class_selectivity(acts, LABELS).item() == pytest.approx(0.0)
    assert uncertainty_coefficient(acts, LABELS).item() == pytest.approx(0.0, abs=1e-7)


def test_never_firing_and_constant_units_are_dead_not_zero():
    acts = torch.stack([torch.zeros(6), torch.full((6,), 2.5), torch.tensor([3.0, 5, 0, 0, 0, 0])], dim=1)
    csi, u = class_selectivity(acts, LABELS), uncertainty_coefficient(acts, LABELS)
    assert torch.isnan(csi[:2]).all() and torch.isnan(u[:2]).all()
    metrics = monosemanticity_metrics(acts, LABELS)
    assert metrics["dead_units"] == 2 and metrics["num_units"] == 3
    assert metrics["csi_mean"] == pytest.approx(1.0) and metrics["u_mean"] == pytest.approx(1.0)


def test_negative_activations_are_measured_from_the_units_floor():
    shifted = torch.tensor([[3.0], [5.0], [0.0], [0.0], [0.0], [0.0]]) - 10.0  # the selective unit, moved below 0
    assert class_selectivity(shifted, LABELS).item() == pytest.approx(1.0)


def test_a_single_class_gives_nan_not_a_crash():
    acts = torch.rand(5, 4)
    labels = torch.zeros(5, dtype=torch.long)
    metrics = monosemanticity_metrics(acts, labels)
    assert math.isnan(metrics["csi_mean"]) and math.isnan(metrics["u_mean"])


def test_quantiles_and_vectorised_agreement_with_a_loop():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (200,))
    acts = torch.relu(torch.randn(200, 30) + (labels[:, None] == torch.arange(30)[None] % 4) * 1.5)
    csi = class_selectivity(acts, labels)
    for unit in range(30):  # the per-unit definition, written plainly
        means = torch.stack([acts[labels == c, unit].double().mean() for c in range(4)])
        top, rest = means.max(), (means.sum() - means.max()) / 3
        assert csi[unit].item() == pytest.approx(((top - rest) / (top + rest)).item(), rel=1e-5)
    metrics = monosemanticity_metrics(acts, labels)
    assert metrics["csi_q10"] <= metrics["csi_q50"] <= metrics["csi_q90"]


@pytest.mark.parametrize("n", [0, 1])
def test_no_or_one_example_gives_nan_everywhere_not_a_crash(n):
    """With one example every unit is trivially constant: CSI, U and the dead-unit counts say nothing."""
    metrics = monosemanticity_metrics(torch.rand(n, 4), torch.zeros(n, dtype=torch.long))
    assert metrics["num_units"] == 4
    assert all(math.isnan(v) for k, v in metrics.items() if k != "num_units"), metrics


def test_two_examples_of_two_classes_are_scored():
    acts = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    metrics = monosemanticity_metrics(acts, torch.tensor([0, 1]))
    assert class_selectivity(acts, torch.tensor([0, 1]))[0].item() == pytest.approx(1.0)
    assert metrics["dead_units"] == 2 and metrics["never_or_always_firing_units"] == 2
    assert metrics["csi_mean"] == pytest.approx(1.0) and metrics["u_mean"] == pytest.approx(1.0)


def test_a_class_with_a_single_example_is_fine():
    acts = torch.tensor([[3.0], [5.0], [0.0]])
    labels = torch.tensor([0, 0, 1])
    assert class_selectivity(acts, labels).item() == pytest.approx(1.0)
    assert uncertainty_coefficient(acts, labels).item() == pytest.approx(1.0)


def test_live_unit_counts_say_how_many_units_each_mean_covers():
    # units: dead (never fires), constant 2.5 (no CSI; fires always: no U), selective, fires on every other example
    acts = torch.stack([torch.zeros(6), torch.full((6,), 2.5), torch.tensor([3.0, 5, 0, 0, 0, 0]),
                        torch.tensor([1.0, 0, 1, 0, 1, 0])], dim=1)
    metrics = monosemanticity_metrics(acts, LABELS)
    assert metrics["csi_live_units"] == 2 and metrics["u_live_units"] == 2
    assert metrics["csi_live_units"] == metrics["num_units"] - metrics["dead_units"]
    assert metrics["csi_mean"] == pytest.approx((1.0 + 0.0) / 2)  # over the 2 live units only
