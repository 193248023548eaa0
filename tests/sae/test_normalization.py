"""Input normalisation: buffers match hand-computed values, and encode/decode stay in the raw space."""

import math

import pytest
import torch

from sae_ception.errors import ArtifactError
from sae_ception.evaluation.sae_quality import sae_quality

from tests.sae.helpers import LINEAR_SAE_TYPES, make_sae, sparse_data


def _assert_b_dec_starts_at(sae, fitted_b_dec_D, initial_b_dec_D, **tolerance):
    """b_dec after set_normalization: the normalised data mean, or (the paper's SAE: no fitted init) left as built."""
    if type(sae).data_fitted_init:
        assert torch.allclose(sae.b_dec_D, fitted_b_dec_D, **tolerance)
    else:
        assert torch.equal(sae.b_dec_D, initial_b_dec_D)


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_none_keeps_identity_and_starts_b_dec_at_the_mean(sae_type):
    sae = make_sae(sae_type, d_in=2, d_sae=4, normalize="none")
    initial_b_dec = sae.b_dec_D.detach().clone()
    sae.set_normalization(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    assert torch.equal(sae.norm_shift_D, torch.zeros(2)) and torch.equal(sae.norm_scale_D, torch.ones(2))
    _assert_b_dec_starts_at(sae, torch.tensor([2.0, 4.0]), initial_b_dec)


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_scale_makes_mean_squared_norm_equal_d_in(sae_type):
    sae = make_sae(sae_type, d_in=2, d_sae=4, normalize="scale")
    acts = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # mean squared norm 12.5 -> scale sqrt(12.5 / 2) = 2.5
    initial_b_dec = sae.b_dec_D.detach().clone()
    sae.set_normalization(acts)
    assert torch.allclose(sae.norm_scale_D, torch.full((2,), 2.5)) and torch.equal(sae.norm_shift_D, torch.zeros(2))
    assert sae.normalize(acts).pow(2).sum(-1).mean().item() == pytest.approx(2.0)
    _assert_b_dec_starts_at(sae, torch.tensor([0.6, 0.8]), initial_b_dec)  # normalised mean [1.5, 2] / 2.5


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_standardize_uses_per_dim_mean_and_population_std(sae_type):
    sae = make_sae(sae_type, d_in=2, d_sae=4, normalize="standardize")
    acts = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])  # second dim is constant -> scale 1
    initial_b_dec = sae.b_dec_D.detach().clone()
    sae.set_normalization(acts)
    assert torch.allclose(sae.norm_shift_D, torch.tensor([3.0, 10.0]))
    assert torch.allclose(sae.norm_scale_D, torch.tensor([math.sqrt(8 / 3), 1.0]))
    _assert_b_dec_starts_at(sae, torch.zeros(2), initial_b_dec, atol=1e-6)


@pytest.mark.parametrize("normalize", ["scale", "standardize"])
@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_decode_of_encode_is_in_the_raw_space(sae_type, normalize):
    sae = make_sae(sae_type, d_in=8, d_sae=32, normalize=normalize)
    acts = torch.randn(256, 8) * 10 + 100
    sae.set_normalization(acts)
    fitted = type(sae).data_fitted_init
    if fitted:  # an all-zero code decodes to b_dec, i.e. the data mean mapped back to the raw space
        assert torch.allclose(sae.decode(torch.zeros(1, 32)), acts.mean(0, keepdim=True), atol=1e-3)
    else:  # the paper's SAE has no fitted init: b_dec is not the data mean, but it too is mapped back by hand
        raw_b_dec = sae.b_dec_D * sae.norm_scale_D + sae.norm_shift_D
        assert torch.allclose(sae.decode(torch.zeros(1, 32)), raw_b_dec[None], atol=1e-4)
    recon = sae.decode(sae.encode(acts))
    assert torch.allclose(sae.denormalize(sae.normalize(acts)), acts, atol=1e-4)
    if fitted:  # (an untrained SAE without the fitted encoder scale, the paper's, reconstructs far from the data)
        assert (recon.mean(0) - acts.mean(0)).abs().max() < 20  # raw scale (around 100), not normalised (around 0)


def test_bad_activation_matrix_is_an_artifact_error():
    sae = make_sae("relu", d_in=8)
    with pytest.raises(ArtifactError, match=r"\[N, 8\]"):
        sae.set_normalization(torch.zeros(0, 8))
    with pytest.raises(ArtifactError, match=r"\[N, 8\]"):
        sae.set_normalization(torch.zeros(5, 7))


@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_data_init_gives_a_reconstruction_no_worse_than_the_mean(sae_type, normalize):
    """The encoder is rescaled by least squares, so before any step EV >= 0 (a plain tied init overshoots).
    The paper's SAE (no fitted init) keeps its encoder as built."""
    sae = make_sae(sae_type, d_in=16, d_sae=128, normalize=normalize)
    acts = sparse_data(n=1024) * 5 + 1
    before = sae.W_enc_DF.detach().clone()
    sae.set_normalization(acts)
    if type(sae).data_fitted_init:
        assert sae_quality(sae, acts)["explained_variance"] >= -1e-5
    else:  # no fitted init (the paper's SAE): no rescale, so no EV guarantee before training
        assert torch.equal(sae.W_enc_DF, before)
    ratio = sae.W_enc_DF / before  # only a scalar rescale: still tied in direction
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
