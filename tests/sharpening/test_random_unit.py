"""random_unit (the pre-issue-12 `random`): seeded random unit vectors."""

import torch

from tests.sharpening.helpers import ACTS, hand_sae, make_targets


def test_targets_are_seeded_unit_vectors():
    sae = hand_sae("relu")
    a, b, c = (make_targets("random_unit", sae, seed=s) for s in (0, 0, 1))
    assert a.shape == ACTS.shape
    assert torch.allclose(a.norm(dim=-1), torch.ones(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_same_draws_as_before_issue_12():
    g = torch.randn(ACTS.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(make_targets("random_unit", hand_sae("relu"), seed=5), g / g.norm(dim=-1, keepdim=True))
