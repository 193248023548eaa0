"""SAE quality metrics against hand-computed values on a tiny hand-set SAE."""

import pytest
import torch

from sae_ception.evaluation.sae_quality import reconstruct, sae_quality
from sae_ception.sae import ReluSAEConfig, build_sae

from tests.sae.helpers import make_sae

ACTS = torch.tensor([[1.0, 2.0], [-1.0, 0.0], [3.0, -2.0], [0.0, 1.0]])


def _hand_set_sae():
    """Latent 0 = relu(x0), latent 1 = relu(x1), latent 2 always 1 (decodes to 0), latent 3 never fires."""
    sae = build_sae(ReluSAEConfig(d_sae=4), d_in=2)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]))
        sae.b_enc_F.copy_(torch.tensor([0.0, 0.0, 1.0, -100.0]))
        sae.W_dec_FD.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))
        sae.b_dec_D.zero_()
    return sae


@pytest.mark.parametrize("batch_size", [1, 3, 4096])
def test_metrics_match_hand_computation(batch_size):
    q = sae_quality(_hand_set_sae(), ACTS, batch_size=batch_size)
    # recon = relu(x): errors (0,0), (1,0), (0,2), (0,0) -> SSE 5 over 8 elements
    assert q["mse"] == pytest.approx(5 / 8) and q["mse_normalized"] == pytest.approx(5 / 8)
    # per-dim means (0.75, 0.25); squared deviations sum to 8.75 per dim
    assert q["explained_variance"] == pytest.approx(1 - 5 / 17.5)
    assert q["l0"] == pytest.approx((3 + 1 + 2 + 2) / 4)
    assert q["l1"] == pytest.approx((4 + 1 + 4 + 2) / 4)
    assert q["dead_fraction"] == pytest.approx(0.25) and q["always_on_fraction"] == pytest.approx(0.25)


def test_mse_normalized_is_in_the_sae_input_space():
    sae = _hand_set_sae()
    sae.norm_scale_D.fill_(2.0)  # codes halve, reconstruction is unchanged in the raw space
    q = sae_quality(sae, ACTS)
    assert q["mse"] == pytest.approx(5 / 8) and q["mse_normalized"] == pytest.approx(5 / 8 / 4)
    assert q["l1"] == pytest.approx((2.5 + 1 + 2.5 + 1.5) / 4)


def test_reconstruct_matches_decode_of_encode():
    sae = make_sae("topk", d_in=8, d_sae=32, normalize="standardize")
    acts = torch.randn(50, 8) * 3 + 1
    sae.set_normalization(acts)
    with torch.no_grad():
        expected = sae.decode(sae.encode(acts))
    assert torch.allclose(reconstruct(sae, acts, batch_size=7), expected, atol=1e-6)
    assert reconstruct(sae, acts).requires_grad is False


def test_half_precision_inputs_are_accepted():
    q = sae_quality(_hand_set_sae(), ACTS.to(torch.bfloat16))
    assert q["mse"] == pytest.approx(5 / 8)
