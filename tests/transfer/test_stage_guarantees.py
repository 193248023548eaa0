"""What the transfer stage (stages/transfer.py) guarantees every method, run in-process on digits with tiny models:
the same k target images for every method of a run (another seed, another k), the same batches for finetune_head
and finetune_replay, joint's validation images and seed, preservation_change = edited - A, and the refusal of a
method that edits A or B in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import sae_ception.run as run_module
from sae_ception.data import load_splits
from sae_ception.transfer import finetune as finetune_module
from sae_ception.transfer import parse_transfer_config
from sae_ception.transfer.methods.activation_transplant import ActivationTransplant
from sae_ception.transfer.methods.none import NoTransfer
from sae_ception.utils.seeding import stage_seed
from tests.pipeline.test_transfer_concept import compose_transfer, run_transfer

# Tiny and fast: 3 epochs of a [16, 8] MLP for A, B and joint; 12 target images; 6 fine-tuning steps; one torch
# thread (on a busy 2-core machine two threads of such tiny matrices wait on each other: runs became ~20x slower).
FAST = ["threads=1", "wandb.mode=disabled", "progress=false", "device=cpu", "plots=false",
        "model_a.hidden_sizes=[16,8]", "model_b.hidden_sizes=[16,8]", "model_a.epochs=3", "model_b.epochs=3",
        "model_a.lr=0.02", "model_b.lr=0.02", "concept.target_images=12",
        "transfer.finetune_head.steps=6", "transfer.finetune_replay.steps=6",
        "transfer.activation_transplant.negatives_per_class=20", "transfer.procrustes_probe.negatives_per_class=20",
        "transfer.procrustes_probe.anchors_per_class=30", "transfer.cascade.ratios=[4,2]",
        "transfer.cascade_isolated.ratios=[4,2]"]
TARGET_METHODS = ["activation_transplant", "procrustes_probe", "procrustes_probe_tuned", "finetune_head",
                  "finetune_replay"]
TARGET, CLASSES_A = 4, [0, 1, 2, 3]
DATA_SEED = 0  # the split every run of these tests reads, whatever its run seed


def run(run_dir: Path, methods: list[str], seed: int = 0, overrides=()) -> dict:
    run_transfer(run_dir, [f"seed={seed}", f"concept.methods=[{','.join(methods)}]", *overrides], base=FAST)
    return json.loads((run_dir / "results" / "transfer.json").read_text())


@pytest.fixture
def fixed_split(monkeypatch):
    """Every run reads the data split of run seed DATA_SEED, so that runs of other seeds differ only in the seeds
    of the models and the methods (positions in the training split mean the same images in every run)."""
    real = load_splits

    def same_split(cfg, seed):
        return real(cfg, seed=stage_seed(DATA_SEED, 0, "data"))

    monkeypatch.setattr(run_module, "load_splits", same_split)
    return same_split


def _digits_splits(fixed_split):
    """The split every run of these tests reads (digits as the transfer config loads it)."""
    cfg = parse_transfer_config(compose_transfer(Path("/nonexistent"), base=FAST))
    return fixed_split(cfg.dataset, 0)


def _weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()


# --- the same k target images, the same batches -------------------------------------------------------------
def test_every_method_gets_the_same_k_target_images_and_another_seed_another_k(tmp_path, monkeypatch, fixed_split):
    # finetune_head and finetune_replay: record every batch each one trains on
    batches: dict[str, list[torch.Tensor]] = {"target_row": [], "all": []}
    for scope, make in list(finetune_module.SCOPES.items()):
        def recording(model, target, scope=scope, make=make):
            params, forward, write_back = make(model, target)

            def recorded(x):
                batches[scope].append(x.detach().cpu().clone())
                return forward(x)

            return params, recorded, write_back

        monkeypatch.setitem(finetune_module.SCOPES, scope, recording)

    # a method that draws from its generator and torch's global one before asking for its images must still get
    # the run's k images: which images is fixed by the run, not by the state of a method's randomness
    original = ActivationTransplant.apply

    def draws_first(self, ctx):
        torch.randperm(100, generator=ctx.generator)
        torch.randperm(100)
        return original(self, ctx)

    monkeypatch.setattr(ActivationTransplant, "apply", draws_first)

    summary = run(tmp_path / "seed0", TARGET_METHODS, seed=0)
    methods = summary["methods"]
    indices = {name: methods[name]["target_image_indices"] for name in TARGET_METHODS}
    first = indices["finetune_head"]
    assert len(first) == 12 and first == sorted(first) and len(set(first)) == 12
    assert all(chosen == first for chosen in indices.values()), indices
    train = _digits_splits(fixed_split).train
    assert bool((train.y[torch.tensor(first)] == TARGET).all())  # positions of target images in the training split
    assert all(methods[name]["budget"]["target_images"] == 12 for name in TARGET_METHODS)
    # the tuned probe chose its alpha on (and counted) the validation images of A's classes and the target
    val = _digits_splits(fixed_split).val
    tuned = methods["procrustes_probe_tuned"]
    assert tuned["budget"]["validation_images"] == int(torch.isin(val.y, torch.tensor([*CLASSES_A, TARGET])).sum())
    assert tuned["diagnostics"]["alpha"] in [1.0, 3.0, 10.0, 30.0] and tuned["settings"]["alpha"] == [1.0, 3.0, 10.0, 30.0]
    assert methods["procrustes_probe"]["budget"]["validation_images"] == 0

    # finetune_head and finetune_replay: equal budgets (but the parameters changed) and the very same batches
    head, replay = methods["finetune_head"]["budget"], methods["finetune_replay"]["budget"]
    assert {k: v for k, v in head.items() if k != "parameters_changed"} == \
           {k: v for k, v in replay.items() if k != "parameters_changed"}
    assert len(batches["target_row"]) == len(batches["all"]) == 6
    assert all(torch.equal(x, y) for x, y in zip(batches["target_row"], batches["all"]))
    assert all(len(x) == 16 + 32 for x in batches["all"])

    # another run seed (on the same split): another k images, again the same for every method
    other = run(tmp_path / "seed1", TARGET_METHODS, seed=1)["methods"]
    other_indices = {name: other[name]["target_image_indices"] for name in TARGET_METHODS}
    assert all(chosen == other_indices["finetune_head"] for chosen in other_indices.values()), other_indices
    assert other_indices["finetune_head"] != first
    assert bool((train.y[torch.tensor(other_indices["finetune_head"])] == TARGET).all())


# --- joint ----------------------------------------------------------------------------------------------------
def test_joint_validates_on_a_classes_and_the_target_and_follows_the_run_seed(tmp_path, fixed_split):
    val = _digits_splits(fixed_split).val
    expected = int(torch.isin(val.y, torch.tensor([*CLASSES_A, TARGET])).sum())
    assert expected > int(torch.isin(val.y, torch.tensor(CLASSES_A)).sum()) > 0
    digests = []
    for seed in (0, 1):
        joint = run(tmp_path / f"seed{seed}", ["joint"], seed=seed)["methods"]["joint"]
        assert joint["budget"]["validation_images"] == expected
        assert joint["budget"]["target_images"] == int((_digits_splits(fixed_split).train.y == TARGET).sum())
        digests.append(_weights_digest(tmp_path / f"seed{seed}" / "checkpoints" / "edited_joint"))
    # the same images (one split), two run seeds: two different joint models
    assert digests[0] != digests[1]


# --- preservation_change ----------------------------------------------------------------------------------------
def test_preservation_change_is_the_edited_model_minus_a(tmp_path, monkeypatch):
    def always_the_target(self, ctx):  # a method that wrecks A's own classes: every image becomes the target
        edited = ctx.copy_of_a()
        with torch.no_grad():
            edited.head.bias[ctx.concept.target] = 1e4
        return edited

    monkeypatch.setattr(NoTransfer, "apply", always_the_target)
    summary = run(tmp_path / "run", ["none", "finetune_replay"],
                  overrides=["transfer.finetune_replay.replay_batch=0", "transfer.finetune_replay.lr=0.05"])
    a = summary["models"]["a"]
    for name in ("none", "finetune_replay"):
        for split, base in (("measures", a), ("validation", a["validation"])):
            m = summary["methods"][name][split]
            assert m["preservation_change"] == m["preservation"] - base["preservation"], (name, split)
    wrecked = summary["methods"]["none"]
    assert wrecked["measures"]["preservation"] == 0.0 and wrecked["measures"]["transfer"] == 1.0
    assert wrecked["measures"]["preservation_change"] == -a["preservation"] < -0.5
    assert wrecked["validation"]["preservation_change"] == -a["validation"]["preservation"] < -0.5
    # trained on the target alone, fine-tuning every weight forgets A's classes: a negative change
    assert summary["methods"]["finetune_replay"]["measures"]["preservation_change"] < 0


# --- A and B come back unchanged ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["model_a", "model_b"])
def test_a_method_that_edits_a_or_b_in_place_is_refused(tmp_path, monkeypatch, which):
    def edits_in_place(self, ctx):
        with torch.no_grad():
            getattr(ctx, which).head.bias[0] += 1.0
        return ctx.copy_of_a()

    monkeypatch.setattr(NoTransfer, "apply", edits_in_place)
    with pytest.raises(RuntimeError, match=r"transfer method none changed model A or B \(or an SAE\) in place; it must edit a copy"):
        run(tmp_path / "run", ["none"])
    assert not (tmp_path / "run" / "results" / "methods" / "none.json").exists()
