"""TopK SAE: exact sparsity, the k <= width check, and the AuxK dead-latent loss."""

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.sae import TopKSAEConfig, TrainingState, build_sae

from tests.sae.helpers import make_sae


def test_exactly_k_nonzeros_per_row_on_random_input():
    sae = make_sae("topk", d_in=16, d_sae=64, k=8)
    codes = sae.encode(torch.randn(200, 16))
    assert ((codes != 0).sum(-1) == 8).all() and (codes >= 0).all()


def test_never_more_than_k_when_few_pre_activations_are_positive():
    sae = make_sae("topk", d_in=16, d_sae=64, k=8)
    with torch.no_grad():
        sae.b_enc_F.fill_(-1e3)
        sae.b_enc_F[:3] = 1e3  # only 3 latents can be positive
    codes = sae.encode(torch.randn(50, 16))
    assert ((codes != 0).sum(-1) == 3).all()
    with torch.no_grad():
        sae.b_enc_F.fill_(-1e3)  # all negative: no latent fires
    assert (sae.encode(torch.randn(50, 16)) == 0).all()


def test_keeps_the_largest_pre_activations():
    sae = make_sae("topk", d_in=4, d_sae=6, k=2)
    pre = torch.tensor([[0.5, 3.0, -1.0, 2.0, 0.1, 1.0]])
    assert torch.equal(sae.activation(pre), torch.tensor([[0.0, 3.0, 0.0, 2.0, 0.0, 0.0]]))


@pytest.mark.parametrize("d_sae,k,match", [
    (256, 300, r"^sae\.k=300 is larger than the SAE width 256; use 1 <= sae\.k <= 256$"),
    (32, 33, r"^sae\.k=33 is larger than the SAE width 32"),
])
def test_k_larger_than_width_is_a_config_error(d_sae, k, match):
    with pytest.raises(ConfigError, match=match):
        build_sae(TopKSAEConfig(d_sae=d_sae, k=k), d_in=16)
    with pytest.raises(ConfigError, match=match):
        TopKSAEConfig(d_sae=d_sae, k=k).validate_for(16)


def test_k_width_check_uses_the_expansion_factor():
    with pytest.raises(ConfigError, match=r"sae\.k=40 is larger than the SAE width 32"):
        build_sae(TopKSAEConfig(k=40, expansion_factor=2), d_in=16)


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, r"sae\.k=0"), ({"aux_k": 0}, r"sae\.aux_k=0"),
                                          ({"aux_coefficient": -1.0}, r"sae\.aux_coefficient=-1\.0")])
def test_bad_topk_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TopKSAEConfig(**kwargs)


def test_aux_k_default_and_override():
    assert TopKSAEConfig(k=4, d_sae=64).aux_k_for(16) == 8  # d_in // 2
    assert TopKSAEConfig(k=12, d_sae=64).aux_k_for(16) == 12  # never fewer than k
    assert TopKSAEConfig(k=4, d_sae=6).aux_k_for(16) == 6  # never more than the width
    assert TopKSAEConfig(k=4, d_sae=64, aux_k=5).aux_k_for(16) == 5


def test_aux_loss_is_zero_without_dead_latents():
    sae = make_sae("topk", d_in=16, d_sae=64, k=4)
    x = torch.randn(32, 16)
    for state in (None, TrainingState(step=0, dead_F=torch.zeros(64, dtype=torch.bool))):
        out = sae(x, state)
        assert out.losses["aux"] == 0 and torch.equal(out.losses["total"], out.losses["mse"])


def test_aux_loss_reconstructs_the_residual_from_dead_latents_only():
    sae = make_sae("topk", d_in=16, d_sae=64, k=4, aux_k=6, aux_coefficient=0.5)
    x = torch.randn(32, 16)
    dead_F = torch.arange(64) >= 48
    out = sae(x, TrainingState(step=0, dead_F=dead_F))
    # by hand: top-6 of the dead latents' pre-activations, decoded without bias, vs the detached residual
    x_norm = sae.normalize(x)
    pre = sae.pre_activation(x_norm).detach()
    residual = x_norm - sae.decode_normalized(sae.activation(pre))
    dead_pre = pre[:, 48:]
    vals, idx = dead_pre.topk(6, dim=-1)
    codes = torch.zeros_like(dead_pre).scatter(-1, idx, vals.relu())
    expected = ((codes @ sae.W_dec_FD[48:] - residual).pow(2).sum() / residual.pow(2).sum())
    assert torch.allclose(out.losses["aux"], expected, atol=1e-6)
    assert torch.allclose(out.losses["total"], out.losses["mse"] + 0.5 * expected, atol=1e-6)
    out.losses["aux"].backward()
    assert sae.W_enc_DF.grad[:, :48].abs().sum() == 0 and sae.W_enc_DF.grad[:, 48:].abs().sum() > 0
    assert sae.W_dec_FD.grad[:48].abs().sum() == 0
