"""Each sharpener against a hand-made example (identity 'SAE' so the kept codes are the targets)."""

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.sharpening import SHARPENERS, SharpeningConfig, build_sharpener


class IdentitySAE:
    """encode/decode are the identity, so targets equal the sharpened codes."""

    def encode(self, x):
        return x

    def decode(self, codes):
        return codes


CODES = torch.tensor(
    [
        [1.0, 0.0, 2.0, 0.0],  # class 0
        [3.0, 0.0, 0.0, 1.0],  # class 0
        [0.0, 5.0, 0.0, 1.0],  # class 1
        [1.0, 4.0, 2.0, 3.0],  # class 1
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])


def targets(kind: str, pct: float = 50.0, seed: int = 0):
    sharpener = build_sharpener(SharpeningConfig(type=kind, top_k_pct=pct))
    return sharpener.make_targets(IdentitySAE(), CODES, LABELS, torch.Generator().manual_seed(seed))


def test_per_class_keeps_the_class_top_latents():
    # class means: class 0 -> [2, 0, 1, 0.5] keeps latents {0, 2}; class 1 -> [0.5, 4.5, 1, 2] keeps {1, 3}
    expected = torch.tensor(
        [
            [1.0, 0.0, 2.0, 0.0],
            [3.0, 0.0, 0.0, 0.0],
            [0.0, 5.0, 0.0, 1.0],
            [0.0, 4.0, 0.0, 3.0],
        ]
    )
    assert torch.equal(targets("per_class"), expected)


def test_per_example_keeps_each_examples_own_top_latents():
    expected = torch.tensor(
        [
            [1.0, 0.0, 2.0, 0.0],
            [3.0, 0.0, 0.0, 1.0],
            [0.0, 5.0, 0.0, 1.0],
            [0.0, 4.0, 0.0, 3.0],
        ]
    )
    assert torch.equal(targets("per_example"), expected)


def test_per_example_25_pct_keeps_one_latent():
    expected = torch.tensor([[0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 4.0, 0, 0]])
    assert torch.equal(targets("per_example", pct=25), expected)


def test_targets_are_decoded_with_the_real_sae():
    from sae_ception.sae import build_sae, SAE_TYPES

    cfg = SAE_TYPES.get("relu").config_class(type="relu", d_sae=8)
    sae = build_sae(cfg, d_in=4)
    acts = torch.rand(6, 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    sharpener = build_sharpener(SharpeningConfig(type="per_example", top_k_pct=25))
    got = sharpener.make_targets(sae, acts, labels, torch.Generator().manual_seed(0))
    codes = sae.encode(acts)
    kept = torch.zeros_like(codes).scatter_(1, codes.topk(2, dim=1).indices, 1.0)
    assert torch.allclose(got, sae.decode(codes * kept))


@pytest.mark.parametrize("pct,width,kept", [(10, 256, 26), (100, 16, 16), (0.1, 16, 1), (50, 4, 2), (12.5, 8, 1)])
def test_top_k_pct_is_a_percentage_of_the_width(pct, width, kept):
    assert SharpeningConfig(top_k_pct=pct).num_kept(width) == kept


@pytest.mark.parametrize("pct", [0, -5, 100.5, 1000])
def test_top_k_pct_outside_0_100_is_rejected(pct):
    with pytest.raises(ConfigError, match=r"sharpening.top_k_pct=.*\(0, 100\]"):
        SharpeningConfig(top_k_pct=pct)


def test_registry_lists_the_strategies_and_controls():
    assert SHARPENERS.names() == [
        "bias_only", "class_mean", "paper_shuffled", "per_class", "per_example", "random", "random_unit", "shuffled"]
    assert [name for name in SHARPENERS.names() if not SHARPENERS.get(name).control] == ["per_class", "per_example"]


def test_every_strategy_has_one_yaml_naming_it():
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[2] / "configs" / "sharpening"
    types = {path.stem: yaml.safe_load(path.read_text())["type"] for path in folder.glob("*.yaml")}
    assert types == {name: name for name in SHARPENERS.names()}
