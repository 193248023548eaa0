"""Classifier training that diverges stops with one line naming the training, the epoch and the learning-rate
setting to lower (issue 11, item 2)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from sae_ception.data import Split
from sae_ception.errors import DivergenceError
from sae_ception.models import build_model
from sae_ception.models.mlp import MLPConfig
from sae_ception.training.classifier import AuxiliaryTargets, ClassifierSchedule, train_classifier


def _train(lr, **kwargs):
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    split = Split(x=x, y=(x[:, 0] > 0).long())
    model = build_model(MLPConfig(hidden_sizes=[8, 4]), input_dim=6, num_classes=2)
    return train_classifier(model, split, split, ClassifierSchedule(epochs=3, batch_size=16, lr=lr, keep_best=True),
                            accelerator=Accelerator(cpu=True), generator=torch.Generator().manual_seed(0),
                            show_progress=False, **kwargs)


@pytest.mark.parametrize("lr", [1e30, 1e36])
def test_baseline_divergence_names_the_epoch_and_model_lr(lr):
    with pytest.raises(DivergenceError) as info:
        _train(lr, stage="baseline", what="baseline training", lr_setting="model.lr")
    message = str(info.value)
    assert message.startswith(f"model.lr={lr:g}: baseline training diverged in epoch 1 of 3 (") and "\n" not in message
    assert message.endswith("; lower model.lr") and "nan" in message


def test_auxiliary_divergence_names_the_cycle_and_cycle_lr():
    with pytest.raises(DivergenceError, match=r"^cycle\.lr=1e\+30: auxiliary training of cycle 2 diverged in epoch 1 "
                                              r"of 3 \(train_\w+ nan\); lower cycle\.lr$"):
        _train(1e30, stage="auxiliary", aux=AuxiliaryTargets(torch.randn(64, 4), weight=1.0),
               what="auxiliary training of cycle 2", lr_setting="cycle.lr")


def test_non_finite_auxiliary_targets_make_the_losses_non_finite():
    with pytest.raises(DivergenceError, match=r"in epoch 1 of 3 \(train_\w+ nan\)"):
        _train(0.01, stage="auxiliary", aux=AuxiliaryTargets(torch.full((64, 4), float("nan")), weight=1.0))


def test_lr_setting_names_what_trained_each_model():
    from sae_ception.training.classifier import lr_setting_of

    cfg = SimpleNamespace(model=SimpleNamespace(lr=1e-3), cycle=SimpleNamespace(lr=None))
    assert lr_setting_of(cfg, 0) == ("model.lr", 1e-3)
    assert lr_setting_of(cfg, 2) == ("model.lr", 1e-3)  # cycle.lr null: auxiliary training uses model.lr
    cfg.cycle.lr = 5e-4
    assert lr_setting_of(cfg, 0) == ("model.lr", 1e-3) and lr_setting_of(cfg, 1) == ("cycle.lr", 5e-4)
    cfg.cycle.init = "scratch"  # retraining from scratch uses the baseline's schedule, model.lr
    assert lr_setting_of(cfg, 1) == ("model.lr", 1e-3)
