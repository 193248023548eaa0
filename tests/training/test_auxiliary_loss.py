"""The auxiliary objective 1 - cos(activation, target) on hand-computed cases, and that it trains."""

import torch

from sae_ception.training.auxiliary_loss import cosine_alignment_loss


def test_hand_computed_values():
    acts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [3.0, 4.0]])
    targets = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [4.0, 3.0]])
    # per row: orthogonal 1, aligned 0, opposite 2, cos = 24/25 -> 1/25
    expected = (1 + 0 + 2 + 1 / 25) / 4
    assert torch.isclose(cosine_alignment_loss(acts, targets), torch.tensor(expected))


def test_scale_invariant_and_zero_safe():
    acts = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[5.0, 0.0], [1.0, 0.0]])
    loss = cosine_alignment_loss(acts, targets)  # row 2: zero activation -> cos 0 -> loss 1, no NaN
    assert torch.isclose(loss, torch.tensor(0.5))


def test_gradient_moves_activation_towards_target():
    acts = torch.tensor([[1.0, 0.2]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0]])
    before = cosine_alignment_loss(acts, target)
    before.backward()
    with torch.no_grad():
        after = cosine_alignment_loss(acts - 0.1 * acts.grad, target)
    assert after < before
