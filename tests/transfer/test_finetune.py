"""The training baselines finetune_head and finetune_replay on a separable toy: what they change, the budget they
report, reproducibility, that training teaches the target, and their one-line refusals."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sae_ception.data import DataSplits, Split
from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.models.mlp import MLPClassifier, MLPConfig
from sae_ception.transfer import parse_transfer_config
from sae_ception.transfer.config import ConceptConfig
from sae_ception.transfer.context import TransferContext
from sae_ception.transfer.data import TransferData
from sae_ception.transfer.measures import parameters_changed
from sae_ception.transfer.methods.finetune_head import FinetuneHead, FinetuneHeadConfig
from sae_ception.transfer.methods.finetune_replay import FinetuneReplay, FinetuneReplayConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
METHODS = {"finetune_head": (FinetuneHead, FinetuneHeadConfig), "finetune_replay": (FinetuneReplay, FinetuneReplayConfig)}
D = WIDTH = 6  # input features = hidden width = classes
PER_CLASS = 12  # training (and test) images of every class
TARGET = 4


def _images(per_class: int, seed: int) -> Split:
    """Class c: the unit vector e_c plus uniform noise in [0, 0.3) on every feature (so no feature is ever 0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(D).repeat_interleave(per_class)
    return Split(torch.eye(D)[y] + 0.3 * torch.rand(len(y), D, generator=g), y)


def _splits() -> DataSplits:
    return DataSplits(_images(PER_CLASS, 0), _images(2, 1), _images(PER_CLASS, 2), num_classes=D, input_shape=(D,),
                      source="toy")


def _model_a() -> MLPClassifier:
    """Hidden layer = the input (identity, no unit ever silent); head: 3 x e_c for A's classes 0-3, zero rows with
    bias -1 for classes 4 and 5, so A never predicts them."""
    model = MLPClassifier(MLPConfig(hidden_sizes=[WIDTH]), input_dim=D, num_classes=D)
    with torch.no_grad():
        model.blocks[0][0].weight.copy_(torch.eye(D))
        model.blocks[0][0].bias.zero_()
        model.head.weight.copy_(3 * torch.eye(D))
        model.head.weight[4:] = 0
        model.head.bias.copy_(torch.tensor([0.0, 0, 0, 0, -1, -1]))
    return model


def _apply(name: str, seed: int = 0, model_a=None, splits=None, **settings):
    """(edited model, context) of one method on the toy."""
    method_class, config_class = METHODS[name]
    cfg = config_class(**{"target_images": 8, "steps": 10, **settings})
    model_a = model_a if model_a is not None else _model_a()
    run = SimpleNamespace(accelerator=Accelerator(cpu=True))
    ctx = TransferContext(run, name, cfg, model_a, model_a, TransferData(splits or _splits(), ConceptConfig()),
                          torch.Generator().manual_seed(seed))
    return method_class(name, cfg).apply(ctx), ctx


def _recall(model, split: Split) -> float:
    with torch.no_grad():
        predicted = model.eval()(split.x).argmax(1)
    return float((predicted[split.y == TARGET] == TARGET).float().mean())


def test_finetune_head_changes_only_the_target_row():
    a = _model_a()
    before = copy.deepcopy(a.state_dict())
    edited, _ = _apply("finetune_head", model_a=a)
    assert parameters_changed(a, edited) == (WIDTH + 1, 0)
    state = edited.state_dict()
    for key, value in before.items():
        if key.startswith("head."):
            assert not torch.equal(state[key][TARGET], value[TARGET])
            state[key], value = state[key].clone(), value.clone()
            state[key][TARGET] = value[TARGET] = 0
        assert torch.equal(state[key], value), key  # bit-identical
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())  # A itself untouched
    assert all(p.requires_grad for p in edited.parameters())


def test_finetune_replay_may_change_every_parameter():
    a = _model_a()
    edited, _ = _apply("finetune_replay", model_a=a)
    assert parameters_changed(a, edited)[0] > WIDTH + 1
    assert not torch.equal(edited.blocks[0][0].weight, a.blocks[0][0].weight)
    assert not torch.equal(edited.head.weight[:TARGET], a.head.weight[:TARGET])


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("replay_per_class, other", [(5, 4 * 5), (None, 4 * PER_CLASS), (2, 4 * 2)])
def test_budget_is_exact(name, replay_per_class, other):
    _, ctx = _apply(name, target_images=7, steps=4, target_batch=3, replay_batch=12, replay_per_class=replay_per_class)
    assert ctx.budget.as_dict() == {"target_images": 7, "target_labels": True, "other_images": other,
                                    "validation_images": 0, "gradient_steps": 4,
                                    "parameters_changed": 0, "parameters_added": 0}  # the stage fills the last two


@pytest.mark.parametrize("name", METHODS)
def test_the_replay_pool_is_never_larger_than_the_draws_so_every_counted_image_is_trained_on(name):
    """2 steps x 5 replay images reach 10 images: 2 of each of A's 4 classes are drawn, not the whole pool."""
    _, ctx = _apply(name, target_images=6, steps=2, target_batch=3, replay_batch=5, replay_per_class=None)
    assert ctx.budget.other_images == 4 * 2 and ctx.budget.target_images == 6


def test_more_target_images_than_the_steps_can_draw_is_refused():
    from sae_ception.transfer.methods.finetune_head import FinetuneHeadConfig

    with pytest.raises(ConfigError, match=r"transfer.finetune_head.steps=2 x transfer.finetune_head.target_batch=3 draw "
                                          r"only 6 target images, fewer than transfer.finetune_head.target_images=7"):
        FinetuneHeadConfig(target_images=7, steps=2, target_batch=3).validate_for("finetune_head", None)


@pytest.mark.parametrize("name", METHODS)
def test_no_replay_uses_no_other_image(name):
    edited, ctx = _apply(name, replay_batch=0)
    assert ctx.budget.other_images == 0 and ctx.budget.target_images == 8 and ctx.budget.gradient_steps == 10


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_result(name):
    first, _ = _apply(name, seed=5)
    second, _ = _apply(name, seed=5)
    other, _ = _apply(name, seed=6, target_images=4)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


def test_both_methods_draw_the_same_batches():
    """For one seed they see the same images in the same order: only the trained parameters differ."""
    seen = {}
    for name in METHODS:
        a = _model_a()
        inputs = []
        a.blocks[0][0].register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
        _apply(name, seed=3, model_a=a, replay_per_class=6)
        seen[name] = inputs
    head, replay = seen["finetune_head"], seen["finetune_replay"]
    assert len(head) == len(replay) == 10 and all(len(x) == 16 + 32 for x in head)
    assert all(torch.equal(x, y) for x, y in zip(head, replay))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_one_step_moves_the_target_row_by_the_configured_lr(name, lr):
    """Adam's first step moves every weight whose gradient is not zero by lr (times the sign of the gradient):
    the configured lr, not a fixed one."""
    a = _model_a()
    edited, _ = _apply(name, model_a=a, steps=1, lr=lr)
    moved = torch.cat([edited.head.weight[TARGET] - a.head.weight[TARGET],
                       (edited.head.bias[TARGET] - a.head.bias[TARGET])[None]]).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, lr), rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_training_starts_from_a_target_row(name):
    """A whose target row is not zero, a tiny lr: the trained row stays next to A's row (it starts from it)."""
    a = _model_a()
    with torch.no_grad():
        a.head.weight[TARGET] = torch.linspace(-2.0, 2.0, WIDTH)
        a.head.bias[TARGET] = 1.5
    edited, _ = _apply(name, model_a=a, steps=10, lr=1e-5)
    torch.testing.assert_close(edited.head.weight[TARGET], a.head.weight[TARGET], atol=10 * 1e-5 * 1.01, rtol=0)
    torch.testing.assert_close(edited.head.bias[TARGET], a.head.bias[TARGET], atol=10 * 1e-5 * 1.01, rtol=0)
    assert not torch.equal(edited.head.weight[TARGET], a.head.weight[TARGET])  # it did train


def test_more_steps_of_finetune_head_raise_the_target_recall():
    test = _splits().test
    assert _recall(_model_a(), test) == 0.0
    recalls = [_recall(_apply("finetune_head", steps=steps, lr=0.05)[0], test) for steps in (1, 5, 20, 40)]
    assert recalls == sorted(recalls) and recalls[0] == 0.0 and recalls[-1] >= 0.9, recalls


@pytest.mark.parametrize("name", METHODS)
def test_more_target_images_than_the_class_has_is_one_line(name):
    method_class, config_class = METHODS[name]
    data = TransferData(_splits(), ConceptConfig())
    method_class(name, config_class(target_images=PER_CLASS)).preflight(data)  # exactly all of them: fine
    with pytest.raises(ConfigError) as info:
        method_class(name, config_class(target_images=PER_CLASS + 1)).preflight(data)
    assert str(info.value) == (f"transfer.{name}.target_images={PER_CLASS + 1} is more than the {PER_CLASS} "
                               f"training images of class {TARGET}; give at most {PER_CLASS}")
    with pytest.raises(ConfigError) as same:  # the context's own wording, had the preflight not run
        _apply(name, target_images=PER_CLASS + 1)
    assert str(same.value) == str(info.value)


BAD = [("steps", 0), ("lr", 0.0), ("lr", -0.01), ("lr", float("nan")), ("target_batch", 0), ("replay_batch", -1),
       ("replay_per_class", 0), ("target_images", 0)]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("key, value", BAD)
def test_bad_settings_are_one_line(name, key, value):
    cfg = METHODS[name][1](**{key: value})
    with pytest.raises(ConfigError) as info:
        cfg.validate_for(name, SimpleNamespace(model_a=SimpleNamespace(name="mlp")))
    message = str(info.value)
    assert message.startswith(f"transfer.{name}.{key}={value} ") and "\n" not in message


def test_finetune_head_needs_an_mlp_head():
    cfg = SimpleNamespace(model_a=SimpleNamespace(name="minilm"),
                          concept=SimpleNamespace(classes_a=[0, 1, 2, 3], target_images=100))
    with pytest.raises(ConfigError, match="transfer.finetune_head: .*model_a.name=minilm"):
        FinetuneHeadConfig().validate_for("finetune_head", cfg)
    FinetuneReplayConfig().validate_for("finetune_replay", cfg)


@pytest.mark.parametrize("name", METHODS)
def test_divergence_is_one_line_naming_the_lr(name):
    with pytest.raises(DivergenceError) as info:
        _apply(name, lr=1e37)
    message = str(info.value)
    assert message.startswith(f"transfer.{name}.lr=1e+37: ") and f"lower transfer.{name}.lr" in message
    assert "\n" not in message


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("transfer_concept", overrides=["transfer=[none,finetune_head,finetune_replay]",
                                                     "concept.methods=[none,finetune_head,finetune_replay]",
                                                     *overrides])
    return parse_transfer_config(cfg)


def test_yaml_defaults_equal_budgets_and_k_from_the_concept():
    cfg = _compose(["concept.target_images=30"])
    head, replay = cfg.transfer["finetune_head"], cfg.transfer["finetune_replay"]
    assert (head.type, replay.type) == ("finetune_head", "finetune_replay")
    assert head.target_images == replay.target_images == 30
    assert head.steps == replay.steps == 50
    assert (head.target_batch, head.replay_batch) == (replay.target_batch, replay.replay_batch) == (16, 32)
    assert head.replay_per_class == replay.replay_per_class == 100
    assert (head.lr, replay.lr) == (0.01, 1e-3)
    assert head == FinetuneHeadConfig(target_images=30) and replay == FinetuneReplayConfig(target_images=30)


def test_yaml_bad_setting_is_one_line():
    with pytest.raises(ConfigError, match=r"^transfer\.finetune_replay\.steps=0 must be a positive integer"):
        _compose(["transfer.finetune_replay.steps=0"])
