"""The MLP classifier: target layer selection, config errors, checkpoint round trip and mismatch."""

import pytest
import torch

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.models import build_model, capture_output, load_model, save_model
from sae_ception.models.mlp import MLPConfig


def test_target_layer_is_the_chosen_hidden_block():
    model = build_model(MLPConfig(hidden_sizes=[7, 5, 3], target_layer=1), input_dim=4, num_classes=2)
    with capture_output(model.target_module()) as box:
        logits = model(torch.randn(6, 4))
    assert logits.shape == (6, 2) and box["acts"].shape == (6, 5)
    assert (box["acts"] >= 0).all()  # post-ReLU
    assert model.target_width() == 5
    assert build_model(MLPConfig(hidden_sizes=[7, 5, 3], target_layer=-1), 4, 2).target_width() == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden_sizes": [16, 0]}, "model.hidden_sizes"),
        ({"hidden_sizes": [16, -4]}, "model.hidden_sizes"),
        ({"hidden_sizes": []}, "model.hidden_sizes"),
        ({"target_layer": 2}, "model.target_layer=2"),
        ({"epochs": -1}, "model.epochs"),
        ({"lr": 0.0}, "model.lr"),
    ],
)
def test_bad_values_fail_with_the_setting_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MLPConfig(**kwargs)


def test_checkpoint_round_trip(tmp_path):
    cfg = MLPConfig(hidden_sizes=[8, 4])
    model = build_model(cfg, 10, 3)
    save_model(model, tmp_path / "m")
    other = build_model(cfg, 10, 3)
    load_model(tmp_path / "m", other, setting="inputs.model")
    x = torch.randn(5, 10)
    assert torch.equal(model(x), other(x))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]


def test_checkpoint_that_does_not_fit_names_the_tensor(tmp_path):
    save_model(build_model(MLPConfig(hidden_sizes=[8, 4]), 10, 3), tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"inputs.model: .*blocks.0.0.weight has shape \(8, 10\) in the checkpoint but \(16, 10\)"):
        load_model(tmp_path / "m", build_model(MLPConfig(hidden_sizes=[16, 4]), 10, 3), setting="inputs.model")
