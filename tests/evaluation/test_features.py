"""Feature statistics on hand-made codes, and logit effects on a hand-built model and SAE."""

from __future__ import annotations

import pytest
import torch

from sae_ception.evaluation.features import feature_statistics, input_gradient_maps, logit_effects, most_active_features
from sae_ception.models import build_model
from sae_ception.models.mlp import MLPConfig
from sae_ception.sae import build_sae
from sae_ception.sae.relu import ReluSAEConfig


def test_statistics_of_hand_made_codes():
    codes = torch.tensor([[0.0, 2.0, 0.0], [1.0, 4.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert most_active_features(codes, 2).tolist() == [1, 0]  # feature 1 fires 3 times, feature 0 twice
    f1, f0, f2 = feature_statistics(codes, labels, torch.tensor([1, 0, 2]), num_classes=2, top_k=2)
    assert f1["activation_rate"] == 0.75 and f1["mean_activation"] == pytest.approx(7 / 3)
    assert f1["label_histogram"] == [2, 1] and f1["label_mode"] == 0
    assert [e["index"] for e in f1["top_examples"]] == [1, 0] and f1["top_examples"][0] == {"index": 1, "activation": 4.0, "label": 1}
    assert f0["label_histogram"] == [0, 2] and f0["label_mode"] == 1 and f0["mean_activation"] == 2.0
    assert f2["activation_rate"] == 0 and f2["label_mode"] is None and f2["top_examples"] == []


def identity_model_and_sae():
    """A 2-2-2 MLP and a 2-latent SAE whose weights are all identities: feature f reads hidden unit f = x_f."""
    model = build_model(MLPConfig(hidden_sizes=[2], target_layer=-1), input_dim=2, num_classes=2)
    sae = build_sae(ReluSAEConfig(d_sae=2, normalize="none"), d_in=2)
    with torch.no_grad():
        for weight in (model.blocks[0][0].weight, model.head.weight, sae.W_enc_DF, sae.W_dec_FD):
            weight.copy_(torch.eye(2))
        for bias in (model.blocks[0][0].bias, model.head.bias, sae.b_enc_F, sae.b_dec_D):
            bias.zero_()
    return model, sae


def test_input_gradient_map_of_a_hand_built_model():
    model, sae = identity_model_and_sae()
    x = torch.tensor([[1.0, 0.5], [0.2, 3.0], [2.0, -1.0]])
    maps = input_gradient_maps(model, sae, x, torch.tensor([0, 1]), [[0, 1], [0, 2]])
    # feature 0 = relu(x_0): gradient (1, 0) on both rows; feature 1 = relu(x_1): (0, 1) on row 0, (0, 0) on
    # row 2 (x_1 < 0, the ReLU is off), so its average is (0, 0.5)
    torch.testing.assert_close(maps, torch.tensor([[1.0, 0.0], [0.0, 0.5]]))


def test_logit_effect_of_a_hand_built_model():
    """One hidden unit per class into an identity head: raising a feature whose decoder row is hidden unit 1
    by 2.0 raises logit 1 by exactly 2.0 and leaves logit 0 alone."""
    model, sae = identity_model_and_sae()
    x = torch.tensor([[1.0, 0.5], [0.2, 3.0], [2.0, 2.0]])  # positive: the ReLUs pass everything
    effects = logit_effects(model, sae, x, features=torch.tensor([1, 0]), amounts=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(effects, torch.tensor([[0.0, 2.0], [0.5, 0.0]]))
