"""JumpReLU's straight-through gradients against hand-derived values, and BatchTopK's exact batch count."""

from __future__ import annotations

import torch

from sae_ception.sae.batchtopk import keep_batch_top_k
from sae_ception.sae.jumprelu import JumpReLUFunction, StepFunction
from tests.sae.helpers import make_sae, sparse_data


def test_jumprelu_straight_through_gradients_by_hand():
    # threshold 1.0, bandwidth 0.5: the kernel is 1/0.5 = 2 where |pre − 1| < 0.25, else 0
    pre = torch.tensor([[0.5, 0.9, 1.1, 2.0]], requires_grad=True)
    threshold = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    out = JumpReLUFunction.apply(pre, threshold, 0.5)
    assert out.tolist() == [[0.0, 0.0, 1.100000023841858, 2.0]]
    out.sum().backward()
    assert pre.grad.tolist() == [[0.0, 0.0, 1.0, 1.0]]  # H(pre − θ)
    assert threshold.grad.tolist() == [0.0, -2.0, -2.0, 0.0]  # −(θ/ε) K: −(1/0.5) inside the window


def test_step_function_gradient_by_hand_and_none_for_pre():
    pre = torch.tensor([[0.8, 1.2], [3.0, 1.05]], requires_grad=True)
    threshold = torch.tensor([1.0, 1.0], requires_grad=True)
    step = StepFunction.apply(pre, threshold, 0.5)
    assert step.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    (step * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    # window |pre − 1| < 0.25 holds for 0.8 (column 0, weight 1), 1.2 and 1.05 (column 1, weights 2 and 4)
    assert threshold.grad.tolist() == [-2.0 * 1.0, -2.0 * (2.0 + 4.0)]
    assert pre.grad.abs().sum() == 0


def test_jumprelu_thresholds_learn_and_can_be_retuned(accelerator):
    from sae_ception.sae import train_sae

    sae = make_sae("jumprelu", d_in=16, d_sae=64, epochs=8, batch_size=64, lr=1e-2, l0_coefficient=1e-2, bandwidth=1e-2)
    acts = sparse_data()
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert (sae.threshold_F > sae.cfg.initial_threshold).any()  # the L0 penalty moved the thresholds up
    achieved = sae.retune_thresholds(acts, target_l0=2.0)
    assert abs(achieved - 2.0) < 0.2
    codes = sae.encode(acts)
    assert abs((codes != 0).sum(-1).float().mean().item() - achieved) < 1e-6 and (codes >= 0).all()


def test_batch_top_k_keeps_exactly_k_times_batch():
    torch.manual_seed(0)
    pre = torch.randn(32, 64) + 1.0  # plenty of positive entries
    codes = keep_batch_top_k(pre, k=4)
    assert (codes != 0).sum() == 4 * 32
    kept = codes[codes != 0]
    assert kept.min() >= pre.flatten().topk(4 * 32).values.min()  # the largest of the whole batch
    assert (codes != 0).sum(-1).float().std() > 0  # rows differ: per-example counts are not fixed at k


def test_batchtopk_uses_a_learned_threshold_at_inference(accelerator):
    from sae_ception.sae import train_sae

    sae = make_sae("batchtopk", d_in=16, d_sae=64, k=3, epochs=4, batch_size=64, lr=1e-2)
    acts = sparse_data()
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert sae.threshold > 0
    sae.eval()
    one, batch = sae.encode(acts[:1]), sae.encode(acts[:64])[:1]
    torch.testing.assert_close(one, batch)  # an example's code does not depend on its batch
    l0 = (sae.encode(acts) != 0).sum(-1).float().mean().item()
    assert 1.5 < l0 < 6  # about k on average


def test_calibration_hits_a_target_l0_on_known_sparse_structure(accelerator):
    """Rows made of 3 active directions out of 32: the calibrated SAEs land within ±10% of L0 10 and 5."""
    from sae_ception.sae.calibration import mean_l0, train_calibrated

    acts = sparse_data(n=4096)
    train, val = acts[:3584], acts[3584:]
    for sae_type, target in (("relu", 10.0), ("jumprelu", 5.0)):
        cfg = make_sae(sae_type, d_in=16, d_sae=64, epochs=6, batch_size=64, lr=1e-2, target_l0=target,
                       calibration_fraction=0.5).cfg
        sae, stats = train_calibrated(cfg, train, val, accelerator=accelerator, seed=0)
        record = stats["calibration"]
        assert record["trials"] and getattr(sae.cfg, cfg.penalty_setting) == record["coefficient"] or "correction" in record
        assert abs(mean_l0(sae, val) - target) <= 0.1 * target, (sae_type, record)
        assert abs(record["achieved_val_l0"] - mean_l0(sae, val)) < 1e-6
