"""scripts/align_features.py on bad input: each stops with exit code 2 and one `error:` line naming the setting, and
writes nothing (no run folder is left; an existing one is unchanged)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import SHARED_DATA, run_script
from tests.pipeline.helpers import snapshot
from tests.pipeline.test_align_features import QUICK, RUN_DATA, alignment, canonical, run_align

NO_MAPPINGS = [o for o in QUICK if not o.startswith("align.mappings=")]  # the tests below choose them




def refused(caplog, run_dir: Path, overrides, match, base=QUICK) -> str:
    """The run stops with exit code 2 and exactly one one-line error containing each of `match`; a folder that did
    not exist is not created, an existing one keeps every file (logs aside) as it was."""
    before = snapshot(run_dir) if run_dir.exists() else None
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_align(run_dir, overrides, base=base)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("error: "), errors[0]
    for part in [match] if isinstance(match, str) else match:
        assert part in errors[0], errors[0]
    if before is None:
        assert not run_dir.exists(), f"a refused run left {sorted(p.name for p in run_dir.iterdir())}"
    else:
        assert snapshot(run_dir) == before, "a refused run must change no file"
    return errors[0]


# --- settings, refused before anything is read or written -------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (["align.model_a=/does/not/exist"], "align.model_a=/does/not/exist: no such folder"),
    (["align.model_b= "], "align.model_b is empty"),
    (["align.layer_a=5"], ["align.layer_a=5 is outside", "2 blocks", "-2..1"]),
    (["align.layer_b=-3"], ["align.layer_b=-3 is outside", "2 blocks"]),
    (["align.level=word"], ["align.level=word", "model A is an mlp", "align.level=example"]),
    (["align.level=sentence"], "align.level='sentence' is not valid"),
    (["align.mappings=[nope]"], "align.mappings: 'nope' is not a configured mapping"),
    (["align.mappings=[procrutes]"], "did you mean procrustes"),
    (["align.mappings=[procrustes,procrustes]"], ["align.mappings=", "repeats a mapping"]),
    (["align.mappings=[]"], "align.mappings is empty"),
    (["align.directions=[sideways]"], ["align.directions=", "sideways", "is not valid"]),
    (["align.directions=[a_to_b,a_to_b]"], ["align.directions=", "repeats a direction"]),
    (["align.thresholds=[1.5]"], ["align.thresholds=[1.5]", "(-1, 1)"]),
    (["align.thresholds=[]"], "align.thresholds=[]"),
    (["align.gallery_pairs=-1"], "align.gallery_pairs=-1 must be >= 0"),
    (["align.cycle_a=-1"], "align.cycle_a=-1 must be >= 0"),
    (["dataset.max_train_examples=1"], ["the train split of dataset digits has 1 examples", "at least 2"]),
    (["align.mappings=[mlp]", "mapping.mlp.lr=-1"], "mapping.mlp.lr=-1"),
    (["align.mappings=[mlp]", "mapping.mlp.epochs=0"], "mapping.mlp.epochs=0 must be a positive integer"),
    (["align.mappings=[crosscoder_batchtopk]", "mapping.crosscoder_batchtopk.sparsity=bogus"],
     "mapping.crosscoder_batchtopk.sparsity='bogus' is not valid"),
    (["align.mappings=[affine]", "mapping.affine.alphas=[]"], "mapping.affine.alphas=[]"),
    (["align.mappings=[affine]", "mapping.affine.alphas=[0.1,-1]"], "mapping.affine.alphas=[0.1, -1"),
    (["align.mappings=[procrustes]", "mapping.procrustes.spaces=[weights]"], "mapping.procrustes.spaces: 'weights'"),
    (["align.mappings=[procrustes]", "mapping.procrustes.type=procrustez"], "mapping.procrustes.type"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, caplog, overrides, match):
    refused(caplog, tmp_path / "run", overrides, match, base=NO_MAPPINGS)


def test_the_default_mapping_list_validates_every_mapping(tmp_path, caplog):
    """With align.mappings left at its default (all five), each mapping's settings are checked up front."""
    base = [o for o in QUICK if not o.startswith("align.mappings=")]
    refused(caplog, tmp_path / "run", ["mapping.mlp.lr=-1"], "mapping.mlp.lr=-1", base=base)
    refused(caplog, tmp_path / "run", ["mapping.crosscoder_l1.sparsity=bogus"],
            "mapping.crosscoder_l1.sparsity='bogus'", base=base)


def test_cli_prints_one_error_line_and_exit_code_2(tmp_path):
    run_dir = tmp_path / "run"
    done = run_script("align_features.py", f"run_dir={run_dir}", "align.model_b=/does/not/exist", "progress=false",
                      "wandb.mode=disabled")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert len(lines) == 1 and "align.model_b=/does/not/exist: no such folder" in lines[0], lines
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()


# --- model sources -----------------------------------------------------------------------------------------------
def test_a_folder_that_is_neither_run_nor_checkpoint(tmp_path, caplog):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)  # a checkpoints folder alone does not make a run folder
    refused(caplog, tmp_path / "run", [f"align.model_a={empty}"],
            [f"align.model_a={empty} is neither a run folder", "nor a model checkpoint folder"])


def test_an_sae_checkpoint_is_not_a_model(base_run, tmp_path, caplog):
    sae = base_run / "checkpoints" / "sae_a"
    refused(caplog, tmp_path / "run", [f"align.model_b={sae}"],
            [f"align.model_b={sae} holds a sae checkpoint, not a model"])


def test_an_alignment_run_is_not_a_train_cycle_run(base_run, tmp_path, caplog):
    """An alignment run folder has config.yaml and checkpoints/ but no `model` section."""
    refused(caplog, tmp_path / "run", [f"align.model_a={base_run}"],
            [f"align.model_a={base_run}", "is not a scripts/train_cycle.py run"])


def test_a_cycle_the_run_does_not_hold(cycle_run, tmp_path, caplog):
    refused(caplog, tmp_path / "run", [f"align.model_a={cycle_run}", "align.cycle_a=7"],
            ["align.cycle_a=7", "holds the models of cycles 0, 1"])


def test_a_layer_outside_a_run_folders_model(cycle_run, tmp_path, caplog):
    refused(caplog, tmp_path / "run", [f"align.model_a={cycle_run}", "align.layer_a=2"],
            ["align.layer_a=2 is outside model A's 2 blocks"])


def test_a_run_made_on_another_dataset(cycle_run, tmp_path, caplog):
    """The run's config.yaml (in a copy) says it read mnist: pairing its rows with digits would pair unrelated
    examples."""
    other = tmp_path / "mnist_run"
    shutil.copytree(cycle_run, other)
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["dataset"].update(name="mnist", path="/data/mnist")
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    line = refused(caplog, tmp_path / "run", [f"align.model_a={other}"],
                   [f"align.model_a={other} was trained on dataset=mnist", "/data/mnist", "dataset=digits"])
    assert "model_cycle_1" in line  # the remedy: its checkpoint folder reads any data


def test_sae_from_run_with_another_seed(cycle_run, tmp_path, caplog):
    refused(caplog, tmp_path / "run", [f"align.model_a={cycle_run}", "align.sae_from_run=true", "seed=1"],
            ["align.sae_from_run=true", "seed=0", "seed=1", "other examples in another order"])


def test_sae_from_run_reading_another_layer(cycle_run, tmp_path, caplog):
    refused(caplog, tmp_path / "run", [f"align.model_a={cycle_run}", "align.sae_from_run=true", "align.layer_a=0",
                                       *RUN_DATA],
            ["align.sae_from_run=true", "align.layer_a", "layer 0"])


def test_sae_from_run_with_another_split(cycle_run, tmp_path, caplog):
    """The run's config.yaml (in a copy) says it carved 30% test rows: with the same seed its training split holds
    part of this alignment's (20%) test split."""
    other = tmp_path / "split_run"
    shutil.copytree(cycle_run, other)
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["dataset"]["test_fraction"] = 0.3
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    refused(caplog, tmp_path / "run", [f"align.model_a={other}", "align.sae_from_run=true", "align.mappings=[procrustes]",
                                       "align.ceiling=false", *RUN_DATA], "dataset.test_fraction=0.3", base=NO_MAPPINGS)


def test_a_checkpoint_made_for_other_inputs(base_run, tmp_path, caplog):
    """An MLP trained on digits (64 features) read on MNIST (784): refused in the preflight, nothing written."""
    mnist = SHARED_DATA / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"needs {mnist} (real MNIST t10k split) beside the project")
    checkpoint = base_run / "checkpoints" / "model_a"
    refused(caplog, tmp_path / "run", [f"align.model_a={checkpoint}", "dataset=mnist", f"dataset.path={mnist}"],
            [f"align.model_a={checkpoint} reads 64 features per example", "784"])


def test_crosscoder_k_above_its_latents(tmp_path, caplog):
    refused(caplog, tmp_path / "run", ["align.mappings=[crosscoder_batchtopk]", "mapping.crosscoder_batchtopk.k=1000",
                                       "align.ceiling=false"], "mapping.crosscoder_batchtopk.k=1000", base=NO_MAPPINGS)


def test_a_transformer_on_feature_vectors_names_its_side(tmp_path, caplog):
    base = [o for o in NO_MAPPINGS if not o.startswith("model_b.")]
    refused(caplog, tmp_path / "run", ["model@model_b=minilm"], "model_b", base=base)


@pytest.mark.parametrize("setting", ["cycle", "sae_from_run"])
def test_settings_that_would_do_nothing(base_run, tmp_path, caplog, setting):
    overrides = ({"cycle": [f"align.model_a={base_run / 'checkpoints' / 'model_a'}", "align.cycle_a=0"],
                  "sae_from_run": ["align.sae_from_run=true"]}[setting])
    refused(caplog, tmp_path / "run", [*overrides, "align.mappings=[procrustes]", "align.ceiling=false"],
            "align.cycle_a" if setting == "cycle" else "align.sae_from_run", base=NO_MAPPINGS)


# --- damaged artifacts on resume ---------------------------------------------------------------------------------
def test_tampered_activations_are_caught_on_resume(base_run, tmp_path, caplog):
    """activations/b/test.labels.npy replaced by a permuted copy (same shape; made_with.json untouched). Observed:
    the product does not recompute; it stops in one line naming the different example order, and changes nothing
    (no table is made from mispaired rows). Its remedy (delete both folders) gives the original table back."""
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    run_align(run_dir)  # resumed once in its new place (config.yaml records the folder)
    original = alignment(run_dir)
    labels = run_dir / "activations" / "b" / "test.labels.npy"
    y = np.load(labels)
    permuted = np.random.default_rng(0).permutation(y)
    assert (permuted != y).any()
    np.save(labels, permuted)
    line = refused(caplog, run_dir, [], ["activations/a and activations/b", "test examples in different orders",
                                         "delete both folders"])
    assert "359 and 359 rows" in line
    assert canonical(alignment(run_dir)) == canonical(original)  # the old table stays, nothing rewritten
    shutil.rmtree(run_dir / "activations")
    run_align(run_dir)
    assert canonical(alignment(run_dir)) == canonical(original)
    assert np.array_equal(np.load(labels), y)
