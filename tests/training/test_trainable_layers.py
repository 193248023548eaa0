"""`cycle.trainable` picks which parameters auxiliary training updates."""

import pytest
import torch
from accelerate import Accelerator

from sae_ception.data import Split
from sae_ception.errors import ConfigError
from sae_ception.models import build_model
from sae_ception.models.mlp import MLPConfig
from sae_ception.training.classifier import AuxiliaryTargets, ClassifierSchedule, select_trainable, train_classifier, trainable_names


def tiny_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    split = Split(x=x, y=(x[:, 0] > 0).long())
    return build_model(MLPConfig(hidden_sizes=[8, 4]), input_dim=6, num_classes=2), split


def test_only_the_named_layers_change():
    model, split = tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, _ = train_classifier(
        model, split, split, ClassifierSchedule(epochs=2, batch_size=16, lr=0.05, keep_best=False),
        accelerator=Accelerator(cpu=True), generator=torch.Generator().manual_seed(0), stage="test",
        aux=AuxiliaryTargets(torch.randn(64, 4), weight=1.0), trainable=("blocks.0",), show_progress=False,
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.0.0.weight", "blocks.0.0.bias"}
    assert all(p.requires_grad for p in model.parameters()), "requires_grad is restored after training"


def test_aux_loss_pulls_activations_towards_targets():
    model, split = tiny_problem()
    targets = torch.rand(64, 4)
    from sae_ception.models import capture_output
    from sae_ception.training.auxiliary_loss import cosine_alignment_loss

    def alignment(m):
        with torch.no_grad(), capture_output(m.target_module()) as box:
            m(split.x)
        return cosine_alignment_loss(box["acts"], targets).item()

    start = alignment(model)
    model, _ = train_classifier(
        model, split, split, ClassifierSchedule(epochs=20, batch_size=16, lr=0.01, keep_best=False),
        accelerator=Accelerator(cpu=True), generator=torch.Generator().manual_seed(0), stage="test",
        aux=AuxiliaryTargets(targets, weight=5.0), show_progress=False,
    )
    assert alignment(model) < start * 0.7


def test_unknown_prefix_names_the_valid_ones():
    model, _ = tiny_problem()
    with pytest.raises(ConfigError, match=r"cycle.trainable=\['blocks.9'\].*valid: all, from_target, or module names \(blocks.0.0, blocks.1.0, head\)"):
        select_trainable(model, ["blocks.9"])


def test_a_prefix_names_whole_modules_only():
    model = build_model(MLPConfig(hidden_sizes=[4] * 11), input_dim=3, num_classes=2)
    select_trainable(model, ["blocks.1"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"blocks.1.0.weight", "blocks.1.0.bias"}


def test_from_target_freezes_the_blocks_below_the_target_layer_of_an_mlp():
    model, _ = tiny_problem()  # two hidden blocks, the target is the last
    assert trainable_names(model, ["from_target"]) == {"blocks.1.0.weight", "blocks.1.0.bias", "head.weight", "head.bias"}
