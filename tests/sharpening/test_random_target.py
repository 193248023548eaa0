"""random: targets with the reference targets' centre and each example's distance from it, random directions."""

import math

import pytest
import torch

from sae_ception.training.auxiliary_loss import cosine_alignment_loss
from tests.sae.helpers import make_sae, sparse_data
from tests.sharpening.helpers import HAND_SAE_TYPES, hand_sae, make_targets

MU = torch.tensor([1.5, 2.0, 0.5])  # mean of PER_CLASS_TOP1, by hand
RADII = torch.tensor([math.sqrt(4.5), math.sqrt(2.5), math.sqrt(5.0), math.sqrt(2.0)])  # ||T_i - MU||, by hand


@pytest.mark.parametrize("sae_type", HAND_SAE_TYPES)
def test_each_target_is_the_reference_distance_from_the_reference_centre(sae_type):
    got = make_targets("random", hand_sae(sae_type), top_k=1)
    assert torch.allclose((got - MU).norm(dim=-1), RADII)


def test_directions_are_the_generators_gaussians():
    got = make_targets("random", hand_sae("relu"), seed=7, top_k=1)
    g = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(got, MU + g * (RADII / g.norm(dim=-1))[:, None])


def test_deterministic_per_seed():
    sae = hand_sae("relu")
    a, b, c = (make_targets("random", sae, seed=s, top_k=1) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_centre_is_the_reference_mean_on_many_examples():
    acts = torch.tensor([[3.0, 1.0, 1.2], [2.0, 0.0, 1.5], [1.0, 4.0, 0.0], [0.0, 3.0, 2.0]]).repeat(2500, 1)
    labels = torch.tensor([0, 0, 1, 1]).repeat(2500)
    got = make_targets("random", hand_sae("relu"), acts=acts, labels=labels, top_k=1)
    assert (got.mean(0) - MU).norm() < 0.1  # max radius 2.24 / sqrt(10000) ~ 0.02 per direction


def test_starting_loss_is_comparable_to_the_real_targets_unlike_random_unit():
    torch.manual_seed(0)
    acts = sparse_data(n=512, d=8, n_dirs=16) + 2.0  # activations sharing a large common component
    labels = torch.arange(512) % 4
    sae = make_sae("relu", d_in=8)
    sae.set_normalization(acts)
    loss = {kind: cosine_alignment_loss(acts, make_targets(kind, sae, acts=acts, labels=labels)).item()
            for kind in ("per_class", "random", "random_unit")}
    assert loss["random"] < 2 * loss["per_class"]  # measured: 0.036 against 0.026
    assert loss["random_unit"] > 0.5  # measured: 1.01
