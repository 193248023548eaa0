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


# --- the objectives of cycle.aux_loss ------------------------------------------------------------------------------

from sae_ception.training.auxiliary_loss import AUX_LOSSES, aux_loss_fn  # noqa: E402


def test_centered_cosine_hand_computed():
    # centre (1, 1): a - mu = (1, 0) and (0, 2); t - mu = (0, 3) and (0, 1) -> cos 0 (loss 1) and cos 1 (loss 0)
    acts = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    targets = torch.tensor([[1.0, 4.0], [1.0, 2.0]])
    center = torch.tensor([1.0, 1.0])
    assert torch.isclose(aux_loss_fn("cosine_centered")(acts, targets, center), torch.tensor(0.5))
    # the plain cosine of the same rows is nearly satisfied (both rows point into the positive quadrant)
    plain = aux_loss_fn("cosine")(acts, targets, center)
    assert plain < 0.2


def test_centered_cosine_is_not_satisfied_by_the_mean():
    # every target is the centre plus a different direction; an activation at the centre (the "bias" solution)
    # is orthogonal-or-worse to them after centring (zero vector: cos 0, loss 1), while plain cosine calls it nearly done
    center = torch.tensor([10.0, 10.0])
    targets = center + torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    acts = center.expand(2, 2).clone()
    assert torch.isclose(aux_loss_fn("cosine_centered")(acts, targets, center), torch.tensor(1.0))
    assert aux_loss_fn("cosine")(acts, targets, center) < 0.01


def test_mse_hand_computed():
    acts = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    # squared errors 0, 4, 9, 1 -> mean over the 4 elements 3.5
    assert torch.isclose(aux_loss_fn("mse")(acts, targets, torch.zeros(2)), torch.tensor(3.5))


def test_every_objective_has_gradient_towards_the_target():
    target = torch.tensor([[0.0, 3.0]])
    center = torch.tensor([0.5, 0.5])
    for name in AUX_LOSSES:
        acts = torch.tensor([[2.0, 0.5]], requires_grad=True)
        before = aux_loss_fn(name)(acts, target, center)
        before.backward()
        with torch.no_grad():
            after = aux_loss_fn(name)(acts - 0.05 * acts.grad, target, center)
        assert after < before, name
