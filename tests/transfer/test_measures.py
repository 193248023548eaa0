"""The measures of a concept transfer, the budget a TransferContext counts, and copy_head, on hand-made cases."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from sae_ception.data import DataSplits, Split
from sae_ception.errors import ConfigError
from sae_ception.models.mlp import MLPClassifier, MLPConfig
from sae_ception.transfer.config import ConceptConfig
from sae_ception.transfer.context import TransferContext
from sae_ception.transfer.data import TransferData
from sae_ception.transfer.measures import accuracy_on, parameters_changed, transfer_measures
from sae_ception.transfer.methods.copy_head import CopyHead, CopyHeadConfig

# --- transfer_measures, accuracy_on -----------------------------------------------------------------------------
# A learned 0 and 1; the target is 2, the distractor 3; 7 is a class no model learned (no confusion row), 9 an
# output outside the shown classes (the `other` column).
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 7]
PREDICTIONS = [0, 0, 2, 1, 9, 2, 2, 0, 9, 2, 3, 2]


def _measures(predictions, labels, shown=(0, 1, 2, 3)):
    return transfer_measures(torch.tensor(predictions), torch.tensor(labels), [0, 1], target=2, distractor=3,
                             shown=list(shown))


def test_transfer_preservation_specificity_by_hand():
    m = _measures(PREDICTIONS, LABELS)
    assert m["transfer"] == 2 / 4  # target images predicted 2, 2, 0, 9
    assert m["preservation"] == 3 / 5  # A's images: 0->0, 0->0, 0->2, 1->1, 1->9
    assert m["specificity"] == 1 / 2  # distractor images called the target: 3->2, 3->3


def test_specificity_counts_distractor_images_called_the_target_not_those_called_other_classes():
    """A distractor image predicted as a third class (A's 0, or an output outside the shown ones) is not called
    the target: specificity counts only the target predictions, whatever else the distractor is called."""
    m = _measures([2, 3, 0, 9, 1], [3, 3, 3, 3, 3])
    assert m["specificity"] == 1 / 5
    assert _measures([0, 9, 1], [3, 3, 3])["specificity"] == 0.0
    assert _measures([2, 2, 3], [3, 3, 3])["specificity"] == 2 / 3


def test_confusion_cell_by_cell_with_the_other_column():
    m = _measures(PREDICTIONS, LABELS)
    assert m["confusion_rows"] == [0, 1, 2, 3]
    assert m["confusion_columns"] == [0, 1, 2, 3, "other"]
    assert m["confusion"] == [
        [2, 0, 1, 0, 0],  # true 0: predicted 0, 0, 2
        [0, 1, 0, 0, 1],  # true 1: predicted 1, 9 (other)
        [1, 0, 2, 0, 1],  # true 2: predicted 2, 2, 0, 9 (other)
        [0, 0, 1, 1, 0],  # true 3: predicted 2, 3
    ]  # the image of class 7 is in no row


def test_confusion_rows_of_absent_classes_are_zero():
    m = _measures([0, 4], [0, 1], shown=(0, 1, 2, 3, 4, 5))
    assert m["confusion"] == [[1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0], *[[0] * 7] * 4]


def test_measures_are_nan_when_their_class_is_absent():
    only_a = _measures([0, 0], [0, 1])
    assert math.isnan(only_a["transfer"]) and math.isnan(only_a["specificity"])
    assert only_a["preservation"] == 1 / 2
    only_target = _measures([2, 0], [2, 2])
    assert math.isnan(only_target["preservation"]) and math.isnan(only_target["specificity"])
    assert only_target["transfer"] == 1 / 2


def test_accuracy_on_counts_only_the_given_classes():
    predictions, labels = torch.tensor([0, 1, 1, 2, 5]), torch.tensor([0, 1, 0, 2, 4])
    assert accuracy_on(predictions, labels, [0, 1]) == 2 / 3
    assert accuracy_on(predictions, labels, [2]) == 1.0
    assert accuracy_on(predictions, labels, [4]) == 0.0
    assert math.isnan(accuracy_on(predictions, labels, [3]))


# --- parameters_changed -----------------------------------------------------------------------------------------
def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_parameters_changed_counts_scalars_and_buffers():
    a = _module()
    edited = copy.deepcopy(a)
    assert parameters_changed(a, edited) == (0, 0)
    with torch.no_grad():
        edited[0].weight[0, 1] += 1.0
        edited[0].bias[1] = -5.0
        edited[1].running_mean[0] = 0.5  # a buffer
    assert parameters_changed(a, edited) == (3, 0)
    assert parameters_changed(a, a) == (0, 0)


def test_parameters_changed_refuses_another_architecture():
    with pytest.raises(ValueError, match="copy of A"):
        parameters_changed(_module(), nn.Linear(3, 2))


# --- the budget a TransferContext counts ------------------------------------------------------------------------
# Train images: x = the image's own index, so a returned row says which image it is. Target 4 has 5 images.
TRAIN_LABELS = [0, 0, 0, 1, 1, 1, 4, 4, 4, 4, 4, 5, 5]
TARGET_ROWS = {6, 7, 8, 9, 10}


def _hand_splits() -> DataSplits:
    n = len(TRAIN_LABELS)
    train = Split(torch.arange(n, dtype=torch.float32)[:, None], torch.tensor(TRAIN_LABELS))
    small = Split(torch.zeros(6, 1), torch.arange(6))
    return DataSplits(train, small, small, num_classes=6, input_shape=(1,), source="hand-made")


def _context(model_a=None, model_b=None, seed=0, splits=None) -> TransferContext:
    data = TransferData(splits or _hand_splits(), ConceptConfig())
    model = model_a if model_a is not None else nn.Linear(1, 6)
    run = SimpleNamespace(accelerator=Accelerator(cpu=True))
    return TransferContext(run, "hand", CopyHeadConfig(), model, model_b if model_b is not None else model, data,
                           torch.Generator().manual_seed(seed))


def _rows(x: torch.Tensor) -> set[int]:
    return {int(v) for v in x[:, 0]}


def test_target_images_counts_k_distinct_images_and_the_labels():
    ctx = _context()
    chosen = ctx.target_images(3)
    assert chosen.shape == (3, 1) and _rows(chosen) <= TARGET_ROWS and len(_rows(chosen)) == 3
    assert (ctx.budget.target_images, ctx.budget.target_labels, ctx.budget.other_images) == (3, True, 0)
    everything = ctx.target_images(5)
    assert _rows(everything) == TARGET_ROWS
    ctx.target_images(5)  # the same images again: not counted twice
    assert ctx.budget.target_images == 5


def test_target_images_same_seed_same_images():
    assert torch.equal(_context(seed=3).target_images(2), _context(seed=3).target_images(2))


def _sampling_context(generator_seed: int, sample_seed: int) -> TransferContext:
    model = nn.Linear(1, 6)
    run = SimpleNamespace(accelerator=Accelerator(cpu=True))
    return TransferContext(run, "hand", CopyHeadConfig(), model, model, TransferData(_hand_splits(), ConceptConfig()),
                           torch.Generator().manual_seed(generator_seed), sample_seed=sample_seed)


def test_target_images_are_a_fixed_order_of_the_run_not_a_draw_per_call():
    """Which k images a method gets depends on the run's sample seed only: not on the method's generator (nor on
    what it drew before), not on how often it asks; a smaller request is part of a larger one."""
    ctx = _sampling_context(generator_seed=0, sample_seed=11)
    first = _rows(ctx.target_images(2))
    torch.randperm(50, generator=ctx.generator)  # the method's own randomness in between
    torch.rand(50)
    assert _rows(ctx.target_images(2)) == first
    nested = [_rows(ctx.target_images(k)) for k in range(1, 6)]
    assert all(small < large for small, large in zip(nested, nested[1:])) and nested[1] == first
    for generator_seed in (1, 2, 3):  # other methods' generators, the same run
        other = _sampling_context(generator_seed=generator_seed, sample_seed=11)
        torch.randperm(7, generator=other.generator)
        assert _rows(other.target_images(2)) == first
    # another run's sample seed: another order of the class's images
    orders = {tuple(sorted(_rows(_sampling_context(0, seed).target_images(2)))) for seed in range(8)}
    assert len(orders) > 1
    firsts = {next(iter(_rows(_sampling_context(0, seed).target_images(1)))) for seed in range(8)}
    assert len(firsts) > 1


def test_target_images_refuses_more_than_the_class_has():
    with pytest.raises(ConfigError) as info:
        _context().target_images(6)
    assert str(info.value) == ("transfer.hand.target_images=6 is more than the 5 training images of class 4; "
                               "give at most 5")


def test_class_images_counts_distinct_other_images():
    ctx = _context()
    both = ctx.class_images([0, 1])
    assert _rows(both.x) == {0, 1, 2, 3, 4, 5} and both.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (ctx.budget.other_images, ctx.budget.target_images, ctx.budget.target_labels) == (6, 0, False)
    ctx.class_images([0, 1])  # the same images again
    ctx.class_images([0, 1], per_class=1)  # a subset of them
    assert ctx.budget.other_images == 6
    sample = ctx.class_images([5], per_class=1)
    assert len(sample) == 1 and sample.y.tolist() == [5]
    assert ctx.budget.other_images == 7
    with pytest.raises(ValueError, match="target_images"):
        ctx.class_images([0, 4])


def test_training_split_with_the_target_counts_all_its_images_and_labels():
    ctx = _context()
    split = ctx.training_split([0, 1, 4])
    assert len(split) == 11 and sorted(set(split.y.tolist())) == [0, 1, 4]
    assert (ctx.budget.target_images, ctx.budget.target_labels, ctx.budget.other_images) == (5, True, 6)
    without = _context()
    without.training_split([0, 5])
    assert (without.budget.target_images, without.budget.target_labels, without.budget.other_images) == (0, False, 5)


def test_add_steps_accumulates():
    ctx = _context()
    ctx.add_steps(3)
    ctx.add_steps(2)
    assert ctx.budget.gradient_steps == 5


# --- copy_head --------------------------------------------------------------------------------------------------
WIDTH = 5


def _mlp(seed: int) -> MLPClassifier:
    torch.manual_seed(seed)
    return MLPClassifier(MLPConfig(hidden_sizes=[7, WIDTH]), input_dim=1, num_classes=6)


def _copy_head(model_a, model_b):
    return CopyHead("copy_head", CopyHeadConfig()).apply(_context(model_a, model_b))


def test_copy_head_on_identical_models_reproduces_b_exactly():
    a = _mlp(0)
    b = copy.deepcopy(a)
    edited = _copy_head(a, b)
    x = torch.randn(20, 1)
    assert torch.equal(edited(x)[:, 4], b(x)[:, 4])
    assert parameters_changed(a, edited) == (0, 0)


def test_copy_head_with_a_different_head_gives_b_target_logits():
    a = _mlp(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.head.weight[4] = torch.randn(WIDTH)
        b.head.bias[4] = 3.0
    edited = _copy_head(a, b)
    x = torch.randn(20, 1)
    assert torch.equal(edited(x)[:, 4], b(x)[:, 4])
    assert torch.equal(edited(x)[:, :4], a(x)[:, :4])


def test_copy_head_on_different_models_changes_exactly_the_target_row():
    a, b = _mlp(0), _mlp(1)
    before = copy.deepcopy(a.state_dict())
    edited = _copy_head(a, b)
    assert parameters_changed(a, edited) == (WIDTH + 1, 0)
    assert torch.equal(edited.head.weight[4], b.head.weight[4]) and torch.equal(edited.head.bias[4], b.head.bias[4])
    state = edited.state_dict()
    for key, value in before.items():
        if key.startswith("head."):
            value, state[key] = value.clone(), state[key].clone()
            value[4] = state[key][4] = 0
        assert torch.equal(state[key], value), key
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())  # A itself untouched


def test_metrics_reference_worked_example():
    """METRICS_REFERENCE.md's concept-transfer example, by the real code."""
    m = transfer_measures(torch.tensor([0, 1, 1, 2, 0, 2, 3]), torch.tensor([0, 0, 1, 2, 2, 3, 3]), [0, 1], 2, 3,
                          [0, 1, 2, 3])
    assert (m["transfer"], m["preservation"], m["specificity"]) == (1 / 2, 2 / 3, 1 / 2)
