"""The weight-surgery transfer methods (procrustes_probe, activation_transplant, cascade) and their shared
helpers (transfer/pathways.py), each against a hand-built case: a known rotation, a hand-wired pathway, a
hand-made selective unit, transplants that write exactly what they select, exact budgets, one-line errors."""

import copy
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sae_ception.data import DataSplits, Split
from sae_ception.errors import ConfigError
from sae_ception.models.mlp import MLPClassifier, MLPConfig
from sae_ception.transfer import TRANSFER_METHODS
from sae_ception.transfer.config import ConceptConfig, parse_transfer_config
from sae_ception.transfer.context import TransferContext
from sae_ception.transfer.data import TransferData
from sae_ception.transfer.layers import hidden_activations, linear_layers, penultimate
from sae_ception.transfer.measures import Budget
from sae_ception.transfer.methods.activation_transplant import ActivationTransplantConfig
from sae_ception.transfer.methods.cascade import CascadeConfig
from sae_ception.transfer.methods.procrustes_probe import ProcrustesProbeConfig
from sae_ception.transfer.pathways import (Probe, carry_probe, cascade_selection, fit_alignment, fit_probe,
                                           selectivity, top_units, transplant)
from sae_ception.transfer.selection import select_on_validation
from tests.conftest import CONFIG_DIR

TARGET = 4
CLASSES = 6
PER_CLASS = 8  # training images of each class in the tiny splits


# --- tiny models, data and contexts -------------------------------------------------------------------------------
def mlp(hidden: list[int], input_dim: int = 6, seed: int = 0) -> MLPClassifier:
    torch.manual_seed(seed)
    model = MLPClassifier(MLPConfig(hidden_sizes=hidden), input_dim=input_dim, num_classes=CLASSES)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)  # frozen, as the stage hands A and B to a method
    return model


def tiny_data(input_dim: int = 6, marker: int | None = None, seed: int = 0) -> TransferData:
    """PER_CLASS training images of each class, uniform in [0, 1]; with `marker`, that feature is 1 on the target
    class's images and 0 on every other image."""
    generator = torch.Generator().manual_seed(seed)

    def split(per_class: int) -> Split:
        y = torch.arange(CLASSES).repeat_interleave(per_class)
        y = y[torch.randperm(len(y), generator=generator)]  # classes interleaved, as in a real split
        x = torch.rand(len(y), input_dim, generator=generator)
        if marker is not None:
            x[:, marker] = (y == TARGET).float()
        return Split(x, y)

    splits = DataSplits(split(PER_CLASS), split(2), split(2), num_classes=CLASSES, input_shape=(input_dim,),
                        source="hand-made")
    return TransferData(splits, ConceptConfig(methods=["none"]))


def context(name: str, settings, model_a, model_b, data: TransferData, seed: int = 0) -> TransferContext:
    run = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), cfg=None)
    return TransferContext(run, name, settings, model_a, model_b, data, torch.Generator().manual_seed(seed))


def method(name: str, settings):
    return TRANSFER_METHODS.get(settings.type)(name, settings)


def transfer_config(*overrides: str):
    """configs/transfer_concept.yaml with these overrides, typed and validated (every method's validate_for)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("transfer_concept", overrides=["run_dir=unused", *overrides])
    return parse_transfer_config(cfg)


def only(name: str, *overrides: str):
    return transfer_config(f"transfer=[{name}]", f"concept.methods=[{name}]", *overrides)


def config_error(*args) -> str:
    with pytest.raises(ConfigError) as info:
        only(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def expected_after_transplant(model_a, model_b, selected, target, copy_head_row) -> dict:
    state = {key: value.clone() for key, value in model_a.state_dict().items()}
    source = model_b.state_dict()
    for layer, units in enumerate(selected):
        for suffix in ("0.weight", "0.bias"):
            key = f"blocks.{layer}.{suffix}"
            state[key][units] = source[key][units]
    if copy_head_row:
        for key in ("head.weight", "head.bias"):
            state[key][target] = source[key][target]
    return state


def assert_state_equal(model, state: dict) -> None:
    actual = model.state_dict()
    assert actual.keys() == state.keys()
    for key in state:
        assert torch.equal(actual[key], state[key]), key


# --- procrustes_probe ---------------------------------------------------------------------------------------------
def random_rotation(dim: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a proper random orthogonal matrix, not symmetric


def test_procrustes_recovers_a_known_rotation_and_the_carried_probe_scores_exactly():
    generator = torch.Generator().manual_seed(1)
    h_b = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    q = random_rotation(6, seed=2)
    h_a = h_b @ q
    alignment = fit_alignment(h_b, h_a)
    torch.testing.assert_close(alignment.rotation, q, atol=1e-10, rtol=0)
    assert alignment.residual < 1e-12

    probe = fit_probe(h_b[:15] + 1.0, h_b[15:])
    assert probe.iterations >= 1
    weight_a, intercept_a = carry_probe(probe, alignment)
    torch.testing.assert_close(weight_a, q.T @ probe.weight)
    torch.testing.assert_close(h_a @ weight_a + intercept_a, h_b @ probe.weight + probe.intercept,
                               atol=1e-10, rtol=0)
    # the reference's `R @ W4` applies the inverse rotation: it does not score A's features as the probe scores B's
    weight_ref, _ = carry_probe(probe, alignment, carry="reference")
    assert not torch.allclose(h_a @ weight_ref, h_b @ probe.weight, atol=1e-3)


def test_centred_procrustes_folds_the_shift_into_the_intercept():
    generator = torch.Generator().manual_seed(3)
    h_b = torch.randn(40, 5, generator=generator, dtype=torch.float64) + 2.0
    q = random_rotation(5, seed=4)
    shift = torch.randn(5, generator=generator, dtype=torch.float64) * 3
    h_a = h_b @ q + shift
    alignment = fit_alignment(h_b, h_a, center=True)
    torch.testing.assert_close(alignment.rotation, q, atol=1e-10, rtol=0)
    probe = Probe(torch.randn(5, generator=generator, dtype=torch.float64), 0.7, 1)
    weight_a, intercept_a = carry_probe(probe, alignment)
    torch.testing.assert_close(h_a @ weight_a + intercept_a, h_b @ probe.weight + probe.intercept,
                               atol=1e-10, rtol=0)


def alive_mlp(input_dim: int, hidden: list[int], seed: int) -> MLPClassifier:
    """An MLP whose hidden units are active on every input in [0, 1]^D (positive biases, small weights), so its
    penultimate features span their whole space."""
    model = mlp(hidden, input_dim, seed)
    with torch.no_grad():
        for layer in linear_layers(model)[:-1]:
            layer.weight.mul_(0.5)
            layer.bias.fill_(2.0)
    return model


def test_procrustes_probe_apply_carries_the_probe_exactly_onto_permuted_units_and_counts_its_budget():
    data = tiny_data(input_dim=10)
    model_b = alive_mlp(10, [8, 5], seed=5)
    model_a = alive_mlp(10, [8, 5], seed=6)
    # A's last hidden layer = B's with its units permuted: A's features are B's times an orthogonal matrix P
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        model_a.blocks[0][0].weight.copy_(model_b.blocks[0][0].weight)
        model_a.blocks[0][0].bias.copy_(model_b.blocks[0][0].bias)
        model_a.blocks[1][0].weight.copy_(model_b.blocks[1][0].weight[perm])
        model_a.blocks[1][0].bias.copy_(model_b.blocks[1][0].bias[perm])
    train = data.splits.train
    assert bool((penultimate(model_b, train.x) > 0).all())  # every unit alive: the features have full rank
    settings = ProcrustesProbeConfig(alpha=0.5, target_images=PER_CLASS, negatives_per_class=100)
    ctx = context("procrustes_probe", settings, model_a, model_b, data)
    edited = method("procrustes_probe", settings).apply(ctx)

    others = torch.isin(train.y, torch.tensor([2, 3, 5]))
    probe = fit_probe(penultimate(model_b, train.x[train.y == TARGET]), penultimate(model_b, train.x[others]))
    assert ctx.budget == Budget(target_images=PER_CLASS, target_labels=True, other_images=3 * PER_CLASS,
                                gradient_steps=probe.iterations)
    x = data.splits.test.x
    gain = edited(x)[:, TARGET] - model_a(x)[:, TARGET]
    score_b = penultimate(model_b, x).double() @ probe.weight + probe.intercept
    torch.testing.assert_close(gain.double(), 0.5 * score_b, atol=1e-4, rtol=1e-4)
    head_a, head_e = linear_layers(model_a)[-1], linear_layers(edited)[-1]
    rows = torch.arange(CLASSES) != TARGET
    assert torch.equal(head_e.weight[rows], head_a.weight[rows]) and torch.equal(head_e.bias[rows], head_a.bias[rows])
    for layer_a, layer_e in zip(linear_layers(model_a)[:-1], linear_layers(edited)[:-1]):
        assert torch.equal(layer_a.weight, layer_e.weight) and torch.equal(layer_a.bias, layer_e.bias)


# --- cascade ------------------------------------------------------------------------------------------------------
def hand_wired_b() -> MLPClassifier:
    """5 inputs -> hidden [6, 5, 4] -> 6 outputs, weights 0.01 except a pathway to the target: the target row reads
    units {1, 3} of layer 2; unit 1 reads {0, 2} of layer 1, unit 3 reads {2, 4}; those read layer 0's {5}, {0},
    {3} and {0} (1-strongest each). Distractors: strong weights that do not lead to the target."""
    model = mlp([6, 5, 4], input_dim=5, seed=7)
    layers = linear_layers(model)
    with torch.no_grad():
        for layer in layers:
            layer.weight.fill_(0.01)
        layers[3].weight[TARGET, 1], layers[3].weight[TARGET, 3] = 5.0, -4.0
        layers[3].weight[0, 0] = 9.0  # another class's row: not followed
        layers[2].weight[1, 0], layers[2].weight[1, 2] = 3.0, -2.0
        layers[2].weight[3, 2], layers[2].weight[3, 4] = 2.5, 1.5
        layers[2].weight[0, 1] = 8.0  # unit 0 of layer 2 is not selected
        layers[1].weight[0, 5], layers[1].weight[0, 1] = 4.0, 0.5
        layers[1].weight[2, 0] = -3.0
        layers[1].weight[4, 3], layers[1].weight[4, 0] = 2.0, 1.0
        layers[1].weight[1, 2] = 7.0  # unit 1 of layer 1 is not selected
    return model


PATHWAY = [[0, 3, 5], [0, 2, 4], [1, 3]]  # layer 0, layer 1, layer 2 of hand_wired_b with ratios [2, 2, 1]


def test_cascade_selects_the_hand_wired_pathway():
    layers = linear_layers(hand_wired_b())
    selected = cascade_selection(layers[-1].weight[TARGET], [layer.weight for layer in layers[:-1]], [2, 2, 1])
    assert [units.tolist() for units in selected] == PATHWAY
    # ratios above a layer's width are capped: every unit of every layer
    selected = cascade_selection(layers[-1].weight[TARGET], [layer.weight for layer in layers[:-1]], [99, 99, 99])
    assert [units.tolist() for units in selected] == [list(range(6)), list(range(5)), list(range(4))]


def test_cascade_apply_transplants_the_pathway_and_spends_nothing():
    model_a, model_b = mlp([6, 5, 4], input_dim=5, seed=8), hand_wired_b()
    settings = CascadeConfig(ratios=[2, 2, 1])
    ctx = context("cascade", settings, model_a, model_b, tiny_data(input_dim=5))
    edited = method("cascade", settings).apply(ctx)
    assert ctx.budget == Budget()
    selected = [torch.tensor(units) for units in PATHWAY]
    assert_state_equal(edited, expected_after_transplant(model_a, model_b, selected, TARGET, copy_head_row=True))


# --- activation_transplant ----------------------------------------------------------------------------------------
def test_selectivity_and_top_units_pick_the_hand_made_selective_unit():
    generator = torch.Generator().manual_seed(9)
    target_acts, other_acts = torch.rand(5, 4, generator=generator), torch.rand(9, 4, generator=generator)
    target_acts[:, 2], other_acts[:, 2] = 3.0, 0.0  # unit 2 fires only on target images
    assert top_units(selectivity(target_acts, other_acts), 1).tolist() == [2]
    assert selectivity(target_acts, other_acts)[2] == 3.0
    assert top_units(torch.tensor([1.0, 2.0, 2.0, 0.0]), 1).tolist() == [1]  # ties: the lower index
    assert top_units(torch.tensor([1.0, 2.0, 3.0]), 10).tolist() == [0, 1, 2]  # capped at the width


def test_activation_transplant_apply_moves_the_selective_unit_and_counts_its_budget():
    data = tiny_data(input_dim=6, marker=5)
    model_a, model_b = mlp([5, 4], seed=10), mlp([5, 4], seed=11)
    with torch.no_grad():
        layer = model_b.blocks[0][0]
        layer.weight.mul_(0.1)
        layer.weight[3] = 0.0
        layer.weight[3, 5], layer.bias[3] = 10.0, 0.0  # unit 3 of hidden layer 0 reads only the target's marker
    settings = ActivationTransplantConfig(target_images=3, negatives_per_class=2, top_k=1, layers=[0])
    ctx = context("activation_transplant", settings, model_a, model_b, data)
    edited = method("activation_transplant", settings).apply(ctx)
    assert ctx.budget == Budget(target_images=3, target_labels=True, other_images=3 * 2, gradient_steps=0)
    selected = [torch.tensor([3]), torch.zeros(0, dtype=torch.long)]
    assert_state_equal(edited, expected_after_transplant(model_a, model_b, selected, TARGET, copy_head_row=True))
    # the transplanted unit fires on the target's images only, as in B
    acts, is_target = hidden_activations(edited, data.splits.test.x)[0][:, 3], data.splits.test.y == TARGET
    assert bool((acts[is_target] > 5).all()) and bool((acts[~is_target] == 0).all())

    # layers=null chooses in every hidden layer; copy_head_row=false leaves A's head alone
    settings = ActivationTransplantConfig(target_images=3, negatives_per_class=2, top_k=2, copy_head_row=False)
    edited = method("activation_transplant", settings).apply(context("activation_transplant", settings, model_a,
                                                                     model_b, data))
    changed = [(linear_layers(edited)[i].weight != linear_layers(model_a)[i].weight).any(1).sum().item()
               for i in range(3)]
    assert changed == [2, 2, 0]


# --- the transplant itself ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("copy_head_row", [True, False])
def test_transplant_writes_exactly_the_selected_rows_and_the_head_row(copy_head_row):
    model_a, model_b = mlp([5, 4]), mlp([5, 4], seed=1)
    edited = mlp([5, 4])
    selected = [torch.tensor([1, 3]), torch.tensor([0])]
    transplant(edited, model_b, selected, TARGET, copy_head_row)
    assert_state_equal(edited, expected_after_transplant(model_a, model_b, selected, TARGET, copy_head_row))


def test_a_full_pathway_transplant_reproduces_b_target_logit_exactly():
    model_a, model_b = mlp([7, 5, 3], seed=2), mlp([7, 5, 3], seed=3)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(0))
    edited = mlp([7, 5, 3], seed=2)
    transplant(edited, model_b, [torch.arange(7), torch.arange(5), torch.arange(3)], TARGET, copy_head_row=True)
    assert torch.equal(edited(x)[:, TARGET], model_b(x)[:, TARGET])
    assert not torch.equal(edited(x), model_b(x))  # the other rows stay A's
    # cascade with ratios at least the widths keeps every unit: the same exact target logit
    settings = CascadeConfig(ratios=[3, 5, 7])
    edited = method("cascade", settings).apply(context("cascade", settings, model_a, model_b, tiny_data()))
    assert torch.equal(edited(x)[:, TARGET], model_b(x)[:, TARGET])


# --- bad settings: one line naming the setting --------------------------------------------------------------------
def test_the_yamls_compose_with_concept_target_images():
    cfg = transfer_config("transfer=[procrustes_probe,activation_transplant,cascade]",
                          "concept.methods=[procrustes_probe,activation_transplant,cascade]", "concept.target_images=7")
    settings = dict(cfg.methods())
    assert settings["procrustes_probe"] == ProcrustesProbeConfig(target_images=7)
    assert settings["activation_transplant"] == ActivationTransplantConfig(target_images=7)
    assert settings["cascade"] == CascadeConfig()


def test_cascade_ratios_of_the_wrong_length_or_below_one_are_one_line():
    message = config_error("cascade", "transfer.cascade.ratios=[24,6]")
    assert message.startswith("transfer.cascade.ratios=[24, 6] has 2 entries but model_a has 4 hidden layers")
    assert "e.g. transfer.cascade.ratios=[24,6,6,6]" in message
    message = config_error("cascade", "transfer.cascade.ratios=[24,6,0,3]")
    assert message.startswith("transfer.cascade.ratios=[24, 6, 0, 3] has 0; every ratio must be >= 1")


@pytest.mark.parametrize("name", ["cascade", "activation_transplant"])
def test_transplants_refuse_models_of_different_architectures(name):
    message = config_error(name, "model@model_b=mlp_wide")
    assert message.startswith(f"transfer.{name}: ") and "one architecture" in message


def test_procrustes_probe_needs_equal_last_widths_only():
    message = config_error("procrustes_probe", "model@model_b=mlp_wide")
    assert message.startswith("transfer.procrustes_probe: ") and "equal width" in message
    only("procrustes_probe", "model_b.hidden_sizes=[32,64]")  # same last width: accepted


@pytest.mark.parametrize("override,setting", [
    ("transfer.procrustes_probe.alpha=0", "transfer.procrustes_probe.alpha=0"),
    ("transfer.procrustes_probe.carry=inverse", "transfer.procrustes_probe.carry='inverse'"),
    ("transfer.procrustes_probe.anchors_per_class=0", "transfer.procrustes_probe.anchors_per_class=0"),
])
def test_procrustes_probe_settings_are_one_line(override, setting):
    assert config_error("procrustes_probe", override).startswith(setting)


@pytest.mark.parametrize("override,setting", [
    ("transfer.activation_transplant.top_k=0", "transfer.activation_transplant.top_k=0"),
    ("transfer.activation_transplant.layers=[4]", "transfer.activation_transplant.layers=[4]"),
    ("transfer.activation_transplant.layers=[0,-4]", "transfer.activation_transplant.layers=[0, -4]"),
])
def test_activation_transplant_settings_are_one_line(override, setting):
    assert config_error("activation_transplant", override).startswith(setting)


@pytest.mark.parametrize("settings", [ProcrustesProbeConfig(target_images=PER_CLASS + 1),
                                      ActivationTransplantConfig(target_images=PER_CLASS + 1)])
def test_more_target_images_than_the_data_has_is_refused_before_anything_runs(settings):
    data = tiny_data()
    name = settings.type
    with pytest.raises(ConfigError) as info:
        method(name, settings).preflight(data)
    expected = (f"transfer.{name}.target_images={PER_CLASS + 1} is more than the {PER_CLASS} training images of "
                f"class {TARGET}; give at most {PER_CLASS}")
    assert str(info.value) == expected
    # the context words it the same way when a method asks for the images
    with pytest.raises(ConfigError) as info:
        context(name, settings, mlp([4]), mlp([4]), data).target_images(PER_CLASS + 1)
    assert str(info.value) == expected
    method(name, type(settings)(target_images=PER_CLASS)).preflight(data)  # exactly enough: accepted


# --- activation_transplant: selectivity subtracts the other classes' mean, on post-ReLU activations -----------------
def test_selectivity_subtracts_the_mean_on_other_images():
    generator = torch.Generator().manual_seed(12)
    target_acts, other_acts = torch.rand(5, 4, generator=generator), torch.rand(9, 4, generator=generator)
    target_acts[:, 0], other_acts[:, 0] = 20.0, 20.0  # unit 0 fires strongly on every image: not selective
    target_acts[:, 2], other_acts[:, 2] = 3.0, 0.0  # unit 2 fires only on target images
    scores = selectivity(target_acts, other_acts)
    assert scores[0] == 0.0 and scores[2] == 3.0
    assert top_units(scores, 1).tolist() == [2]


def test_activation_transplant_ranks_post_relu_activations_against_the_other_classes():
    """B's first hidden layer: unit 0 fires at 20 on every image, unit 1's pre-activation is -85 on target images
    and -100 on the others (after the ReLU: 0 everywhere), unit 3 fires at 10 on target images only. Only the
    difference of post-ReLU means picks unit 3 (a plain mean picks unit 0, pre-ReLU activations pick unit 1)."""
    data = tiny_data(input_dim=6, marker=5)
    model_a, model_b = mlp([5, 4], seed=10), mlp([5, 4], seed=11)
    with torch.no_grad():
        layer = model_b.blocks[0][0]
        layer.weight.mul_(0.1)
        layer.weight[0], layer.bias[0] = 0.0, 20.0
        layer.weight[1] = 0.0
        layer.weight[1, 5], layer.bias[1] = 15.0, -100.0
        layer.weight[3] = 0.0
        layer.weight[3, 5], layer.bias[3] = 10.0, 0.0
    acts = hidden_activations(model_b, data.splits.train.x)[0]
    is_target = data.splits.train.y == TARGET
    assert bool((acts[:, 0] == 20).all()) and bool((acts[:, 1] == 0).all())
    assert bool((acts[is_target, 3] == 10).all()) and bool((acts[~is_target, 3] == 0).all())
    settings = ActivationTransplantConfig(target_images=PER_CLASS, negatives_per_class=PER_CLASS, top_k=1, layers=[0])
    edited = method("activation_transplant", settings).apply(context("activation_transplant", settings, model_a,
                                                                     model_b, data))
    selected = [torch.tensor([3]), torch.zeros(0, dtype=torch.long)]
    assert_state_equal(edited, expected_after_transplant(model_a, model_b, selected, TARGET, copy_head_row=True))


# --- procrustes_probe: the anchors are the shared classes' images -------------------------------------------------
def test_procrustes_probe_fits_its_rotation_on_the_shared_classes_only():
    """A and B unrelated (no exact rotation), so the fitted rotation depends on which images anchor it: the edit
    must be the one fitted on classes 2 and 3 (concept.shared), not on B's other classes 2, 3 and 5."""
    data = tiny_data(input_dim=10)
    model_a, model_b = alive_mlp(10, [8, 5], seed=13), alive_mlp(10, [8, 5], seed=14)
    settings = ProcrustesProbeConfig(alpha=2.0, target_images=PER_CLASS, negatives_per_class=100)
    ctx = context("procrustes_probe", settings, model_a, model_b, data)
    calls = []
    class_images = ctx.class_images

    def recording(classes, per_class=None):
        calls.append((list(classes), per_class))
        return class_images(classes, per_class)

    ctx.class_images = recording
    edited = method("procrustes_probe", settings).apply(ctx)
    assert data.concept.shared == [2, 3]
    assert calls == [([2, 3, 5], 100), ([2, 3], None)]  # the probe's negatives, then the anchors

    train = data.splits.train
    probe = fit_probe(penultimate(model_b, train.x[train.y == TARGET]),
                      penultimate(model_b, train.x[torch.isin(train.y, torch.tensor([2, 3, 5]))]))

    def expected_row(anchor_classes):
        anchors = train.x[torch.isin(train.y, torch.tensor(anchor_classes))]
        weight, intercept = carry_probe(probe, fit_alignment(penultimate(model_b, anchors), penultimate(model_a, anchors)))
        head = linear_layers(model_a)[-1]
        return head.weight[TARGET].double() + 2.0 * weight, float(head.bias[TARGET]) + 2.0 * intercept

    head = linear_layers(edited)[-1]
    weight, bias = expected_row([2, 3])
    torch.testing.assert_close(head.weight[TARGET].double(), weight, atol=1e-4, rtol=1e-4)
    assert abs(float(head.bias[TARGET].detach()) - bias) < 1e-4
    wrong, _ = expected_row([2, 3, 5])
    assert not torch.allclose(wrong, weight, atol=1e-2)  # other anchors would give another edit


# --- transplant with isolate: the pathway as a circuit of its own -------------------------------------------------
def numbered_pair() -> tuple[MLPClassifier, MLPClassifier]:
    """3 inputs -> hidden [4, 3] -> 6 outputs. A's weights and biases count up from 1 layer by layer (positive),
    B's are A's negated, so every cell of an edit says where it came from: A (> 0), B (< 0) or cut (0)."""
    model_a, model_b = mlp([4, 3], input_dim=3), mlp([4, 3], input_dim=3)
    start = 1
    with torch.no_grad():
        for layer_a, layer_b in zip(linear_layers(model_a), linear_layers(model_b)):
            n = layer_a.weight.numel()
            layer_a.weight.copy_(torch.arange(start, start + n, dtype=torch.float32).view_as(layer_a.weight))
            layer_a.bias.copy_(torch.arange(1, 1 + layer_a.bias.numel(), dtype=torch.float32) * 100)
            layer_b.weight.copy_(-layer_a.weight)
            layer_b.bias.copy_(-layer_a.bias)
            start += n
    return model_a, model_b


def test_isolated_transplant_cell_by_cell():
    """Pathway: units {0, 2} of hidden layer 0, unit {1} of hidden layer 1, output row 4."""
    model_a, model_b = numbered_pair()
    edited = copy.deepcopy(model_a)
    transplant(edited, model_b, [torch.tensor([0, 2]), torch.tensor([1])], TARGET, copy_head_row=True, isolate=True)
    layers = linear_layers(edited)
    # hidden layer 0 reads the input: its pathway units are B's rows, the others A's (nothing cut)
    assert layers[0].weight.tolist() == [[-1, -2, -3],
                                         [4, 5, 6],
                                         [-7, -8, -9],
                                         [10, 11, 12]]
    assert layers[0].bias.tolist() == [-100, 200, -300, 400]
    # hidden layer 1: unit 1 (B's) reads only pathway units 0 and 2; units 0 and 2 (A's) no longer read them
    assert layers[1].weight.tolist() == [[0, 14, 0, 16],
                                         [-17, 0, -19, 0],
                                         [0, 22, 0, 24]]
    assert layers[1].bias.tolist() == [100, -200, 300]
    # the head: row 4 (B's) reads only pathway unit 1; every other row (A's) no longer reads it
    assert layers[2].weight.tolist() == [[25, 0, 27],
                                         [28, 0, 30],
                                         [31, 0, 33],
                                         [34, 0, 36],
                                         [0, -38, 0],
                                         [40, 0, 42]]
    assert layers[2].bias.tolist() == [100, 200, 300, 400, -500, 600]


def test_isolated_transplant_without_the_head_row_leaves_nothing_reading_the_pathway():
    model_a, model_b = numbered_pair()
    edited = copy.deepcopy(model_a)
    transplant(edited, model_b, [torch.tensor([0, 2]), torch.tensor([1])], TARGET, copy_head_row=False, isolate=True)
    head = linear_layers(edited)[-1]
    assert head.weight.tolist() == [[25, 0, 27], [28, 0, 30], [31, 0, 33], [34, 0, 36], [37, 0, 39], [40, 0, 42]]
    assert head.bias.tolist() == [100, 200, 300, 400, 500, 600]
    assert linear_layers(edited)[1].weight.tolist() == [[0, 14, 0, 16], [-17, 0, -19, 0], [0, 22, 0, 24]]


def test_isolated_transplant_of_every_unit_gives_b_target_logit_and_cuts_a_other_rows_off():
    model_a, model_b = mlp([7, 5, 3], seed=2), mlp([7, 5, 3], seed=3)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(0))
    edited = copy.deepcopy(model_a)
    transplant(edited, model_b, [torch.arange(7), torch.arange(5), torch.arange(3)], TARGET, copy_head_row=True,
               isolate=True)
    assert torch.equal(edited(x)[:, TARGET], model_b(x)[:, TARGET])
    others = torch.arange(CLASSES) != TARGET
    assert torch.equal(edited(x)[:, others], model_a.head.bias[others].expand(20, -1))  # they read no unit now
    # cascade with isolate and ratios at least the widths: the same
    settings = CascadeConfig(ratios=[3, 5, 7], isolate=True)
    edited = method("cascade", settings).apply(context("cascade", settings, model_a, model_b, tiny_data()))
    assert torch.equal(edited(x)[:, TARGET], model_b(x)[:, TARGET])
    assert torch.equal(edited(x)[:, others], model_a.head.bias[others].expand(20, -1))


@pytest.mark.parametrize("isolate", [False, True])
def test_cascade_and_activation_transplant_pass_isolate_to_the_transplant(isolate):
    model_a, model_b = mlp([6, 5, 4], input_dim=5, seed=8), hand_wired_b()
    settings = CascadeConfig(ratios=[2, 2, 1], isolate=isolate)
    edited = method("cascade", settings).apply(context("cascade", settings, model_a, model_b, tiny_data(input_dim=5)))
    expected = copy.deepcopy(model_a)
    transplant(expected, model_b, [torch.tensor(units) for units in PATHWAY], TARGET, copy_head_row=True,
               isolate=isolate)
    assert_state_equal(edited, expected.state_dict())

    data = tiny_data(input_dim=6, marker=5)
    model_a, model_b = mlp([5, 4], seed=10), mlp([5, 4], seed=11)
    settings = ActivationTransplantConfig(target_images=3, negatives_per_class=2, top_k=2, isolate=isolate)
    ctx = context("activation_transplant", settings, model_a, model_b, data)
    edited = method("activation_transplant", settings).apply(ctx)
    positives, negatives = context("x", settings, model_a, model_b, data).target_and_negatives(3, 2)
    chosen = [top_units(selectivity(t, o), 2) for t, o in zip(hidden_activations(model_b, positives),
                                                               hidden_activations(model_b, negatives.x))]
    expected = copy.deepcopy(model_a)
    transplant(expected, model_b, chosen, TARGET, copy_head_row=True, isolate=isolate)
    assert_state_equal(edited, expected.state_dict())


def test_the_cascade_isolated_yaml_is_the_cascade_with_isolate():
    cfg = transfer_config("transfer=[cascade,cascade_isolated]", "concept.methods=[cascade,cascade_isolated]")
    settings = dict(cfg.methods())
    assert settings["cascade_isolated"] == CascadeConfig(ratios=[24, 6, 4, 3], isolate=True)
    assert settings["cascade_isolated"].type == "cascade"
    assert settings["cascade"] == CascadeConfig(isolate=False)


# --- procrustes_probe with a list of alphas: the choice on validation images ----------------------------------------
VAL_LABELS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5]  # A's classes 0-3 (8 images), the target (4), the distractor


class Fixed:
    """A hand-made candidate: predicts `predicted[i]` for the validation image whose feature is i."""

    def __init__(self, predicted: list[int]):
        self.predicted = torch.tensor(predicted)

    def logits_of(self, x, batch_size, device):
        return torch.nn.functional.one_hot(self.predicted[x[:, 0].long()], CLASSES).float()


def validation_context() -> TransferContext:
    """Validation image i has the single feature i and label VAL_LABELS[i]; training and test are tiny_data's."""
    data = tiny_data(input_dim=1)
    val = Split(torch.arange(len(VAL_LABELS), dtype=torch.float32)[:, None], torch.tensor(VAL_LABELS))
    splits = DataSplits(data.splits.train, val, data.splits.test, num_classes=CLASSES, input_shape=(1,),
                        source="hand-made")
    return context("tuned", ProcrustesProbeConfig(alpha=[1.0, 2.0]), mlp([4], input_dim=1), mlp([4], input_dim=1),
                   TransferData(splits, data.concept))


TRUTH = list(VAL_LABELS)
ALL_TARGET = [TARGET] * len(VAL_LABELS)  # transfer 1, preservation 0: mean 0.5
A_ONLY = [c if c != TARGET else 0 for c in VAL_LABELS]  # transfer 0, preservation 1: mean 0.5
MIXED = [0, 1, 1, 1, 2, 2, 3, 0, 4, 4, 4, 0, 4, 4]  # transfer 3/4, preservation 6/8: mean 0.75 (the distractor is
# called the target: specificity is no part of the choice)


def test_select_on_validation_takes_the_best_mean_of_transfer_and_preservation():
    ctx = validation_context()
    assert select_on_validation(ctx, [Fixed(ALL_TARGET), Fixed(A_ONLY), Fixed(MIXED)]) == 2
    assert ctx.diagnostics == {"validation_score_0": 0.5, "validation_score_1": 0.5, "validation_score_2": 0.75}
    # read: the validation images of A's classes and the target (not the distractor's); nothing else
    assert ctx.budget == Budget(validation_images=8 + 4)
    assert select_on_validation(validation_context(), [Fixed(MIXED), Fixed(TRUTH)]) == 1


def test_select_on_validation_ties_go_to_the_first():
    assert select_on_validation(validation_context(), [Fixed(ALL_TARGET), Fixed(A_ONLY)]) == 0
    assert select_on_validation(validation_context(), [Fixed(A_ONLY), Fixed(ALL_TARGET)]) == 0
    assert select_on_validation(validation_context(), [Fixed(MIXED), Fixed(TRUTH), Fixed(TRUTH), Fixed(A_ONLY)]) == 1


def test_procrustes_probe_with_a_list_of_alphas_keeps_the_one_chosen_on_validation_images():
    data = tiny_data(input_dim=10, marker=9)  # the target's images are told apart by feature 9
    model_a, model_b = alive_mlp(10, [8, 5], seed=15), alive_mlp(10, [8, 5], seed=16)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():  # B's first units read the marker; A's features are B's with the last units permuted
        model_b.blocks[0][0].weight[:4, 9] = 3.0
        model_a.blocks[0][0].weight.copy_(model_b.blocks[0][0].weight)
        model_a.blocks[0][0].bias.copy_(model_b.blocks[0][0].bias)
        model_a.blocks[1][0].weight.copy_(model_b.blocks[1][0].weight[perm])
        model_a.blocks[1][0].bias.copy_(model_b.blocks[1][0].bias[perm])
    alphas = [0.001, 0.25, 4.0, 64.0]  # too weak to call any image the target, too weak, enough, enough (a tie)
    settings = ProcrustesProbeConfig(alpha=alphas, target_images=PER_CLASS, negatives_per_class=100)
    ctx = context("procrustes_probe_tuned", settings, model_a, model_b, data)
    edited = method("procrustes_probe_tuned", settings).apply(ctx)

    # each alpha alone, scored by hand on the validation images of A's classes and the target
    val = data.subset("val", [0, 1, 2, 3, TARGET])
    singles, scores = [], []
    for alpha in alphas:
        single = ProcrustesProbeConfig(alpha=alpha, target_images=PER_CLASS, negatives_per_class=100)
        single_ctx = context("procrustes_probe", single, model_a, model_b, data)
        singles.append((method("procrustes_probe", single).apply(single_ctx), single_ctx))
        with torch.no_grad():
            predicted = singles[-1][0](val.x).argmax(1)
        is_target = val.y == TARGET
        transfer = float((predicted[is_target] == TARGET).float().mean())
        preservation = float((predicted[~is_target] == val.y[~is_target]).float().mean())
        scores.append((transfer + preservation) / 2)
    best = max(range(len(alphas)), key=lambda i: (scores[i], -i))
    assert scores[0] == scores[1] < scores[2] == scores[3], scores  # the choice matters, and the best two tie
    assert best == 2
    assert ctx.diagnostics["alpha"] == alphas[best]
    for index, score in enumerate(scores):
        assert ctx.diagnostics[f"validation_score_{index}"] == pytest.approx(score)
    assert_state_equal(edited, singles[best][0].state_dict())
    # the budget: the single edit's, plus the validation images read (2 of each of A's classes and of the target)
    assert ctx.budget == Budget(**{**singles[best][1].budget.as_dict(), "validation_images": 5 * 2})
    assert singles[best][1].budget.validation_images == 0 and "alpha" not in singles[best][1].diagnostics


@pytest.mark.parametrize("value, rule", [
    ("[]", "[] must be a number > 0"),
    ("[1.0,-2.0]", "[1.0, -2.0] must be a number > 0"),
    ("[1.0,0]", "[1.0, 0.0] must be a number > 0"),
    ("[1.0,3.0,1.0]", "[1.0, 3.0, 1.0] repeats a value"),
])
def test_a_bad_list_of_alphas_is_one_line(value, rule):
    message = config_error("procrustes_probe_tuned", f"transfer.procrustes_probe_tuned.alpha={value}")
    assert message.startswith(f"transfer.procrustes_probe_tuned.alpha={rule}")


def test_the_tuned_yaml_is_procrustes_probe_with_a_list_of_alphas():
    settings = dict(only("procrustes_probe_tuned", "concept.target_images=7").methods())["procrustes_probe_tuned"]
    assert settings == ProcrustesProbeConfig(alpha=[1.0, 3.0, 10.0, 30.0], target_images=7)
    assert list(settings.alpha) == settings.alphas == [1.0, 3.0, 10.0, 30.0]


def _without_validation_images_of(cls: int) -> TransferData:
    data = tiny_data()
    val = data.splits.val
    keep = val.y != cls
    splits = DataSplits(data.splits.train, Split(val.x[keep], val.y[keep]), data.splits.test, num_classes=CLASSES,
                        input_shape=(6,), source="hand-made")
    return TransferData(splits, data.concept)


@pytest.mark.parametrize("missing", [TARGET, 0, 3])
def test_a_list_of_alphas_needs_validation_images_of_a_classes_and_the_target(missing):
    data = _without_validation_images_of(missing)
    tuned = ProcrustesProbeConfig(alpha=[1.0, 3.0], target_images=PER_CLASS)
    with pytest.raises(ConfigError) as info:
        method("procrustes_probe_tuned", tuned).preflight(data)
    message = str(info.value)
    assert message.startswith("transfer.procrustes_probe_tuned.alpha: ") and "\n" not in message
    assert f"class {missing} has none" in message
    method("procrustes_probe", ProcrustesProbeConfig(alpha=1.0, target_images=PER_CLASS)).preflight(data)  # one value
    method("procrustes_probe", ProcrustesProbeConfig(alpha=[2.0], target_images=PER_CLASS)).preflight(data)


def test_a_list_of_alphas_does_not_need_validation_images_of_the_distractor():
    tuned = ProcrustesProbeConfig(alpha=[1.0, 3.0], target_images=PER_CLASS)
    method("procrustes_probe_tuned", tuned).preflight(_without_validation_images_of(5))
