"""bias_only: every target is the SAE's decoding of the all-zero code (the decoder bias in raw space)."""

import pytest
import torch

from tests.sharpening.helpers import ACTS, HAND_SAE_TYPES, hand_sae, make_targets


@pytest.mark.parametrize("sae_type", HAND_SAE_TYPES)
def test_targets_are_the_decoder_bias(sae_type):
    got = make_targets("bias_only", hand_sae(sae_type, b_dec=(0.5, -1.0, 0.25)))
    assert torch.allclose(got, torch.tensor([0.5, -1.0, 0.25]).expand(4, 3))


@pytest.mark.parametrize("sae_type", HAND_SAE_TYPES)
def test_bias_is_mapped_to_the_raw_space(sae_type):
    # normalize: scale with scale 2 -> raw = 2 * normalised, so the raw-space bias is 2 * b_dec
    got = make_targets("bias_only", hand_sae(sae_type, b_dec=(0.5, -1.0, 0.25), scale=2.0))
    assert torch.allclose(got, torch.tensor([1.0, -2.0, 0.5]).expand(4, 3))
    assert got.shape == ACTS.shape and got.is_contiguous()
