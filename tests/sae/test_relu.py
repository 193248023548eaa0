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


def test_free_decoder_weights_l1_by_row_norms_by_hand():
    sae = _hand_set_sae(l1_coefficient=0.1, decoder_norm="free")
    with torch.no_grad():
        sae.W_dec_FD.mul_(torch.tensor([[2.0], [0.5], [1.0]]))  # row norms 2, 0.5, 1
    out = sae(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    # codes [1, 1.5, 0] and [3, 0, 4] -> weighted sums 1*2 + 1.5*0.5 = 2.75 and 3*2 + 4*1 = 10
    assert out.losses["l1"].item() == pytest.approx((2.75 + 10.0) / 2)


def test_free_decoder_starts_at_its_init_norm_with_a_tied_encoder():
    sae = make_sae("relu", decoder_norm="free", decoder_init_norm=0.1)
    norms = sae.W_dec_FD.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, 0.1))
    assert torch.equal(sae.W_enc_DF, sae.W_dec_FD.T)


def test_free_decoder_trains_unconstrained_then_folds_to_unit_rows_keeping_the_function(accelerator):
    from sae_ception.sae import train_sae

    from tests.sae.helpers import sparse_data

    x = sparse_data(n=512, d=8)
    sae = make_sae("relu", d_in=8, decoder_norm="free", decoder_init_norm=0.1, epochs=3, lr=1e-2, l1_coefficient=1e-3)
    seen = {}
    original = sae.finish_training_

    def spy(*args):  # the state training ends in, before the fold
        seen["norms"] = sae.W_dec_FD.norm(dim=-1).clone()
        seen["recon"], seen["codes"] = sae.decode(sae.encode(x)).clone(), sae.encode(x).clone()
        original(*args)

    sae.finish_training_ = spy
    train_sae(sae, x, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert (seen["norms"] - 1).abs().max() > 0.05 and seen["norms"].std() > 1e-3  # never renormalised
    norms = sae.W_dec_FD.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), seen["recon"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), seen["codes"] * seen["norms"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"decoder_norm": "sphere"}, r"^sae\.decoder_norm='sphere' is not valid; use one of unit, free$"),
    ({"decoder_norm": "free", "decoder_init_norm": 0.0}, r"^sae\.decoder_init_norm=0\.0 must be > 0$"),
    ({"decoder_init_norm": 0.1}, r"^sae\.decoder_init_norm=0\.1 needs sae\.decoder_norm=free"),
])
def test_bad_decoder_norm_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ReluSAEConfig(**kwargs)
