"""ReLU SAE: non-negative codes and the L1 term checked against hand-computed values."""

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.sae import ReluSAEConfig, TrainingState, build_sae

from tests.sae.helpers import make_sae


def _hand_set_sae(**cfg):
    """d_in=2, d_sae=3 with weights set by hand (normalize=none, b_dec=0)."""
    sae = build_sae(ReluSAEConfig(d_sae=3, **cfg), d_in=2)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc_F.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec_FD.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2**-0.5, -(2**-0.5)]]))
        sae.b_dec_D.zero_()
    return sae


def test_codes_are_non_negative():
    codes = make_sae("relu", d_in=8, d_sae=32).encode(torch.randn(100, 8) * 4)
    assert (codes >= 0).all() and (codes > 0).any()


def test_l1_term_matches_hand_computation():
    sae = _hand_set_sae(l1_coefficient=0.1)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    out = sae(x)
    # pre-activations: [1, 1.5, -1] and [3, -1.5, 4] -> codes [1, 1.5, 0] and [3, 0, 4]
    assert torch.allclose(out.codes_BF, torch.tensor([[1.0, 1.5, 0.0], [3.0, 0.0, 4.0]]))
    assert out.losses["l1"].item() == pytest.approx((2.5 + 7.0) / 2)
    recon = out.codes_BF @ sae.W_dec_FD
    assert out.losses["mse"].item() == pytest.approx((recon - x).pow(2).mean().item())
    assert out.losses["total"].item() == pytest.approx(out.losses["mse"].item() + 0.1 * 4.75)


def test_l1_coefficient_warms_up_linearly_from_zero():
    sae = _hand_set_sae(l1_coefficient=0.1, l1_warmup_steps=10)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    for step, factor in [(0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0)]:
        losses = sae(x, TrainingState(step=step)).losses
        assert losses["total"].item() == pytest.approx(losses["mse"].item() + factor * 0.1 * 4.75)
    assert sae.loss_weights(None) == {"l1": 0.1}  # outside training: the full coefficient


@pytest.mark.parametrize("kwargs,match", [({"l1_coefficient": -1.0}, r"^sae\.l1_coefficient=-1\.0 must be >= 0$"),
                                          ({"l1_warmup_steps": -2}, r"^sae\.l1_warmup_steps=-2 ")])
def test_bad_relu_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ReluSAEConfig(**kwargs)
