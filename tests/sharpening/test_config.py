"""`sharpening.top_k` (absolute) against `top_k_pct`, and their one-line errors."""

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.sharpening import SharpeningConfig
from tests.sharpening.helpers import PER_CLASS_TOP1, PER_CLASS_TOP2, PER_EXAMPLE_TOP2, hand_sae, make_targets


@pytest.mark.parametrize("top_k,pct,width,kept",
                         [(25, 10.0, 256, 25), (1, 100.0, 16, 1), (16, 0.1, 16, 16), (None, 10.0, 256, 26)])
def test_top_k_replaces_the_percentage_when_set(top_k, pct, width, kept):
    assert SharpeningConfig(top_k=top_k, top_k_pct=pct).num_kept(width) == kept


def test_top_k_keeps_that_many_latents_whatever_the_percentage():
    sae = hand_sae("relu")
    # 10% of 3 latents keeps 1, 50% keeps 2: top_k decides when it is set
    assert torch.allclose(make_targets("per_class", sae, top_k_pct=10.0), PER_CLASS_TOP1)
    assert torch.allclose(make_targets("per_class", sae, top_k_pct=50.0), PER_CLASS_TOP2)
    assert torch.allclose(make_targets("per_class", sae, top_k_pct=10.0, top_k=2), PER_CLASS_TOP2)
    assert torch.allclose(make_targets("per_class", sae, top_k_pct=50.0, top_k=1), PER_CLASS_TOP1)
    assert torch.allclose(make_targets("per_example", sae, top_k_pct=10.0, top_k=2), PER_EXAMPLE_TOP2)


def test_top_k_larger_than_the_sae_width_is_one_line():
    expected = "sharpening.top_k=300 is larger than the SAE width 256 (sae.d_sae); valid: 1..256"
    with pytest.raises(ConfigError) as info:
        SharpeningConfig(top_k=300).validate_for(256)
    assert str(info.value) == expected
    with pytest.raises(ConfigError, match=r"^sharpening\.top_k=300 is larger .*1\.\.256$"):
        SharpeningConfig(top_k=300).num_kept(256)  # also when validate_for was never called
    with pytest.raises(ConfigError, match=r"^sharpening\.top_k=4 is larger than the SAE width 3 "):
        make_targets("per_class", hand_sae("relu"), top_k=4)
    SharpeningConfig(top_k=256).validate_for(256)
    SharpeningConfig(top_k_pct=100.0).validate_for(1)  # no top_k: nothing to check


@pytest.mark.parametrize("top_k", [0, -3])
def test_top_k_below_one_is_rejected(top_k):
    with pytest.raises(ConfigError, match=rf"^sharpening\.top_k={top_k} must be a positive integer"):
        SharpeningConfig(top_k=top_k)


def test_reference_must_be_a_registered_non_control_sharpener():
    from sae_ception.sharpening import ReferencedConfig

    assert ReferencedConfig(type="shuffled", reference="per_example").reference == "per_example"
    for bad in ("random", "shuffled", "class_mean", "per_clas"):
        with pytest.raises(ConfigError) as info:
            ReferencedConfig(type="shuffled", reference=bad)
        assert str(info.value) == (f"sharpening.reference={bad!r} is not a sharpener a control can be matched to; "
                                   "valid: per_class, per_example")
