"""scripts/transfer_concept.py end to end on digits: the default run, resume, reproducibility, bad input."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sae_ception.cli import run_task
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.transfer import TRANSFER_METHODS
from tests.conftest import CONFIG_DIR, run_script
from tests.pipeline.helpers import snapshot

# Small enough for seconds-long runs; the defaults (digits, mega MLPs, every method) run once, in a subprocess.
QUICK = ["wandb.mode=disabled", "progress=false", "device=cpu", "plots=false",
         "model_a.hidden_sizes=[32,16]", "model_b.hidden_sizes=[32,16]", "model_a.epochs=5", "model_b.epochs=5",
         "model_a.lr=0.01", "model_b.lr=0.01",
         "transfer.cascade.ratios=[4,2]", "concept.methods=[none,copy_head,cascade]"]


def compose_transfer(run_dir: Path, overrides=(), base=QUICK):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("transfer_concept", overrides=[*base, f"run_dir={run_dir}", f"paths.output_dir={run_dir}",
                                                      *overrides], return_hydra_config=True)


def run_transfer(run_dir: Path, overrides=(), base=QUICK):
    entry = ENTRYPOINTS["transfer_concept"]
    return run_task(compose_transfer(run_dir, overrides, base), entry.task, entry.preflight, parse=entry.parse,
                    log_name="transfer_concept")


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "transfer.json").read_text())


def test_default_run_on_digits(tmp_path):
    """The README's command with its defaults: every method, one table, the results, the figure, the config."""
    run_dir = tmp_path / "run"
    done = run_script("transfer_concept.py", f"run_dir={run_dir}", "progress=false")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = results(run_dir)
    methods = summary["methods"]
    assert list(methods) == ["none", "joint", "copy_head", "procrustes_probe", "procrustes_probe_tuned",
                             "activation_transplant", "cascade", "cascade_isolated", "finetune_head", "finetune_replay",
                             "sae_splice", "sae_injection", "preserved_injection", "vector_space", "cross_arch_aligner",
                             "aligned_spatial", "aligned_spatial_reachable", "aligned_spatial_no_b"]
    for name, result in methods.items():
        m = result["measures"]
        for measure in ("transfer", "preservation", "specificity"):
            assert 0.0 <= m[measure] <= 1.0, (name, measure, m[measure])
        assert len(m["confusion"]) == 6 and len(m["confusion"][0]) == 7  # classes 0-5, predicted 0-5 + other
        assert (run_dir / "checkpoints" / f"edited_{name}" / "config.json").is_file()
    none, joint, copy = methods["none"], methods["joint"], methods["copy_head"]
    assert none["budget"] == {"target_images": 0, "target_labels": False, "other_images": 0, "validation_images": 0,
                              "gradient_steps": 0, "parameters_changed": 0, "parameters_added": 0}
    assert none["measures"]["preservation_change"] == 0.0
    assert joint["budget"]["target_labels"] and joint["budget"]["gradient_steps"] > 0
    assert joint["measures"]["transfer"] > 0.8  # the ceiling learns the target from all its labelled images
    assert copy["budget"]["parameters_changed"] == 64 + 1  # one row of the 64-wide head, and its bias
    assert copy["budget"]["target_images"] == 0 and copy["budget"]["gradient_steps"] == 0
    diagnostics = methods["procrustes_probe"]["diagnostics"]
    assert 0 < diagnostics["procrustes_residual"] < 2 and 0.5 < diagnostics["carried_auc"] <= 1
    assert diagnostics["carried_score_target"] > diagnostics["carried_score_anchors"] and diagnostics["a_margin_target"] > 0
    assert summary["models"]["a"]["own_accuracy"] > 0.9 and summary["models"]["b"]["transfer"] > 0.8
    assert (run_dir / "plots" / "transfer_confusion.png").stat().st_size > 10_000
    assert (run_dir / "config.yaml").is_file() and (run_dir / "transfer_concept.log").is_file()
    out = done.stdout + done.stderr
    assert "method" in out and "transfer ↑" in out and "finetune_replay" in out


def test_rerun_resumes_and_reproduces(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_transfer(run_dir)
    first = snapshot(run_dir)
    caplog.clear()
    run_transfer(run_dir)  # everything done: nothing recomputed, nothing changed
    assert snapshot(run_dir) == first
    assert any("skipping (resume)" in r.getMessage() for r in caplog.records)
    # a run killed during the methods: the finished ones and A, B are kept, the rest recomputed identically
    (run_dir / "results" / "methods" / "cascade.json").unlink()
    (run_dir / "results" / "transfer.json").unlink()
    model_a = (run_dir / "checkpoints" / "model_a" / "weights.safetensors")
    before = model_a.stat().st_mtime_ns
    run_transfer(run_dir)
    assert snapshot(run_dir) == first and model_a.stat().st_mtime_ns == before
    # the same seed in a new folder: the same numbers
    other = tmp_path / "again"
    run_transfer(other)
    assert results(other)["methods"] == results(run_dir)["methods"]


def test_methods_can_be_added_and_changed_on_a_finished_run(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["concept.methods=[none]"])
    weights = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("model_*/weights.safetensors")}
    run_transfer(run_dir, ["concept.methods=[none,copy_head]"])
    assert list(results(run_dir)["methods"]) == ["none", "copy_head"]
    assert {p: p.stat().st_mtime_ns for p in weights} == weights  # A and B trained once
    run_transfer(run_dir)  # adds cascade, with ratios [4,2]
    caplog.clear()
    run_transfer(run_dir, ["transfer.cascade.ratios=[2,2]"])
    assert any("cascade: its settings changed" in r.getMessage() for r in caplog.records)
    assert results(run_dir)["methods"]["cascade"]["settings"]["ratios"] == [2, 2]


def _refused(caplog, run_dir: Path, overrides, match: str, base=QUICK) -> str:
    """The run stops with exit code 2 and one one-line error containing `match`; no folder is created, and an
    existing one is left as it was."""
    before = snapshot(run_dir) if run_dir.exists() else None
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_transfer(run_dir, overrides, base=base)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert match in errors[0], errors[0]
    if before is None:
        assert not run_dir.exists(), "a refused run must write nothing"
    else:
        assert snapshot(run_dir) == before, "a refused run must change no file"
    return errors[0]


@pytest.mark.parametrize("overrides, match", [
    (["concept.target=2"], "concept.target=2 is in concept.classes_a"),
    (["concept.target=7"], "concept.target=7 is not in concept.classes_b"),
    (["concept.classes_a=[0,1]", "concept.classes_b=[4,5]"], "share no class"),
    (["concept.classes_b=[]"], "concept.classes_b is empty"),
    (["concept.distractor=4"], "concept.distractor=4 must be a class other than"),
    (["concept.classes_b=[2,3,4,12]"], "outside dataset.num_classes=10"),
    (["model_b.hidden_sizes=[32,8]", "concept.methods=[none,copy_head]"], "transfer.copy_head: copying B's output row"),
    (["model_b.hidden_sizes=[16,16]", "concept.methods=[cascade]"], "transfer.cascade"),
    (["concept.methods=[none,cascde]"], "did you mean cascade"),
    (["concept.methods=[none,none]"], "repeats a method"),
    (["concept.methods=[]"], "concept.methods is empty"),
    (["model_a.epochs=0"], "model_a.epochs=0 must be a positive integer"),
    (["concept.target_images=0"], "concept.target_images=0"),
    (["transfer.cascade.type=cascad"], "transfer.cascade.type='cascad' is not a known transfer method"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, caplog, overrides, match):
    _refused(caplog, tmp_path / "run", overrides, match)


def test_a_model_that_is_no_mlp_is_refused(tmp_path, caplog):
    _refused(caplog, tmp_path / "run", ["model@model_a=minilm", "model@model_b=minilm"],
             "model_a.name=transformer: concept transfer compares image", base=["wandb.mode=disabled"])


def test_more_target_images_than_the_data_has_is_refused_before_training(tmp_path, caplog):
    line = _refused(caplog, tmp_path / "run", ["concept.methods=[none,procrustes_probe]", "concept.target_images=5000"],
                    "concept.target_images=5000 (as transfer.procrustes_probe.target_images) is more than the")
    assert "give at most" in line
    _refused(caplog, tmp_path / "run", ["concept.methods=[none,activation_transplant]",
                                        "transfer.activation_transplant.target_images=4000"],
             "transfer.activation_transplant.target_images=4000 is more than the")
    _refused(caplog, tmp_path / "run", ["concept.methods=[none,finetune_head]", "concept.target_images=900"],
             "transfer.finetune_head.steps=50 x transfer.finetune_head.target_batch=16 draw only 800 target images, "
             "fewer than concept.target_images=900 (as transfer.finetune_head.target_images)")
    _refused(caplog, tmp_path / "run", ["concept.methods=[finetune_head]", "transfer.finetune_head.steps=1",
                                        "transfer.finetune_head.target_images=10", "transfer.finetune_head.target_batch=10",
                                        "transfer.finetune_head.replay_batch=2"],
             "transfer.finetune_head.steps=1 x transfer.finetune_head.replay_batch=2 draw fewer replay images than A")


def test_every_method_is_one_class_and_one_yaml_loaded_by_default():
    """A registered method without its YAML (or a YAML the defaults list does not load) would be unreachable; a
    YAML may also configure a variant of a method under another name (cascade_isolated: type cascade)."""
    importlib.import_module("sae_ception.transfer.methods")  # registers every method

    yamls = sorted(p.stem for p in (CONFIG_DIR / "transfer").glob("*.yaml"))
    assert set(TRANSFER_METHODS.names()) <= set(yamls)
    cfg = compose_transfer(Path("/nonexistent"), base=[])
    assert sorted(cfg.transfer) == yamls
    assert sorted(cfg.concept.methods) == yamls  # the default run compares every method
    for name in yamls:
        expected = name if name in TRANSFER_METHODS else {"cascade_isolated": "cascade",
                                                          "procrustes_probe_tuned": "procrustes_probe",
                                                          "sae_splice": "sae_injection",
                                                          "aligned_spatial_reachable": "aligned_spatial",
                                                          "aligned_spatial_no_b": "aligned_spatial"}[name]
        assert cfg.transfer[name].type == expected


def test_wandb_gets_every_method_measures_budget_table_and_figure(tmp_path, fake_wandb):
    from tests.fake_wandb import wandb_calls

    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["wandb.mode=offline", "plots=true"])
    summary = {k: v for call in wandb_calls(fake_wandb, "summary") for k, v in call["values"].items()}
    for name in ("none", "copy_head", "cascade"):
        assert summary[f"transfer/{name}/transfer"] == results(run_dir)["methods"][name]["measures"]["transfer"]
        assert summary[f"budget/{name}/parameters_changed"] == results(run_dir)["methods"][name]["budget"]["parameters_changed"]
    logged = {k: v for call in wandb_calls(fake_wandb, "log") for k, v in call["data"].items()}
    assert [row[0] for row in logged["transfer/table"]["data"]] == ["none", "copy_head", "cascade"]
    assert logged["plots/transfer_confusion"]["path"].endswith("transfer_confusion.png")
    init = wandb_calls(fake_wandb, "init")[0]["kwargs"]
    assert init["config"]["concept"]["target"] == 4 and "concept-transfer" in init["tags"]


def test_mnist_from_the_shared_folder(tmp_path, shared_mnist):
    """`dataset=mnist dataset.path=../shared/data/mnist` runs the same experiment on real MNIST."""
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["dataset=mnist", f"dataset.path={shared_mnist}", "dataset.max_train_examples=3000"])
    summary = results(run_dir)
    assert summary["models"]["a"]["own_accuracy"] > 0.8 and summary["models"]["b"]["transfer"] > 0.8
    test_images = sum(sum(row) for row in summary["methods"]["none"]["measures"]["confusion"])
    assert test_images > 1000  # classes 0-5 of MNIST's 2,000 test images


def test_a_model_checkpoint_that_does_not_fit_is_refused_before_anything_runs(tmp_path, caplog):
    """A's checkpoint replaced by one of another shape (copied in by hand): one line at start, nothing changed."""
    import shutil

    run_dir, other = tmp_path / "run", tmp_path / "other"
    run_transfer(run_dir, ["concept.methods=[none]"])
    run_transfer(other, ["concept.methods=[none]", "model_a.hidden_sizes=[16,16]", "model_b.hidden_sizes=[16,16]"])
    shutil.rmtree(run_dir / "checkpoints" / "model_a")
    shutil.copytree(other / "checkpoints" / "model_a", run_dir / "checkpoints" / "model_a")
    (run_dir / "results" / "transfer.json").unlink()
    _refused(caplog, run_dir, ["concept.methods=[none,copy_head]"], "model_a: checkpoint")


def test_validation_measures_and_the_budget_of_validation_images(tmp_path):
    """Each method is also measured on the validation split (what a choice between settings may read); joint,
    which keeps its best validation epoch, counts the validation images it read."""
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["concept.methods=[none,joint,copy_head]"])
    summary = results(run_dir)
    for name, result in summary["methods"].items():
        assert set(result["validation"]) >= {"transfer", "preservation", "specificity", "preservation_change"}
    assert summary["methods"]["none"]["validation"]["preservation_change"] == 0.0
    assert summary["models"]["a"]["validation"]["own_accuracy"] > 0.8
    val_images = sum(sum(row) for i, row in enumerate(summary["methods"]["none"]["validation"]["confusion"])
                     if summary["methods"]["none"]["validation"]["confusion_rows"][i] in (0, 1, 2, 3, 4))
    assert summary["methods"]["joint"]["budget"]["validation_images"] == val_images > 0
    assert summary["methods"]["copy_head"]["budget"]["validation_images"] == 0
    run_dir = tmp_path / "last_epoch"
    run_transfer(run_dir, ["concept.methods=[joint]", "model_a.keep_best=false"])
    assert results(run_dir)["methods"]["joint"]["budget"]["validation_images"] == 0


def test_weakly_trained_models_are_flagged(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["concept.methods=[none]", "model_b.epochs=1", "model_b.lr=1e-5"])
    warnings = results(run_dir)["warnings"]
    assert any("model B recognises only" in w for w in warnings), warnings
    assert any(r.levelname == "WARNING" and "model B" in r.getMessage() for r in caplog.records)


def test_a_damaged_method_result_is_one_line_and_a_missing_edit_is_recomputed(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["concept.methods=[none,copy_head]"])
    first = results(run_dir)["methods"]
    # the edited model deleted (a damaged one's advice): the method runs again, with the same numbers
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "edited_copy_head")
    run_transfer(run_dir, ["concept.methods=[none,copy_head]"])
    assert (run_dir / "checkpoints" / "edited_copy_head" / "config.json").is_file()
    assert results(run_dir)["methods"] == first
    path = run_dir / "results" / "methods" / "none.json"
    sound = path.read_text()
    for damage, said in ((lambda r: r["measures"].pop("transfer"), "measures.transfer is null, not a number"),
                         (lambda r: r["measures"].update(transfer="abc"), 'measures.transfer is "abc", not a number'),
                         (lambda r: r["budget"].update(gradient_steps=None), "budget.gradient_steps is null"),
                         (lambda r: r.clear(), "no 'settings' object")):
        saved = json.loads(sound)
        damage(saved)
        path.write_text(json.dumps(saved))
        # refused before anything is written, whatever else the command changes
        _refused(caplog, run_dir, ["concept.methods=[none,copy_head]", "transfer.copy_head.type=copy_head"],
                 f"none.json is damaged ({said}")
    path.write_text(sound)


def test_a_result_of_an_earlier_version_is_recomputed_and_a_stale_edited_model_removed(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_transfer(run_dir, ["concept.methods=[none,copy_head]"])
    first = results(run_dir)["methods"]["none"]
    path = run_dir / "results" / "methods" / "none.json"
    older = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("models", "validation")}
    path.write_text(json.dumps(older))
    caplog.clear()
    run_transfer(run_dir, ["concept.methods=[none,copy_head]"])
    assert any("written by an earlier version (no models, validation)" in r.getMessage()
               for r in caplog.records)
    assert results(run_dir)["methods"]["none"] == first
    # recomputed without keeping edited models: the earlier edited model, no longer its, is removed
    run_transfer(run_dir, ["concept.methods=[none,copy_head]", "concept.save_edited=false",
                           "transfer.copy_head.type=copy_head", "concept.target=4"])
    assert (run_dir / "checkpoints" / "edited_copy_head").is_dir()  # unchanged settings: reused as it was
    run_transfer(run_dir, ["concept.methods=[none,procrustes_probe]", "concept.save_edited=false"])
    assert not (run_dir / "checkpoints" / "edited_procrustes_probe").exists()
    run_transfer(run_dir, ["concept.methods=[none,procrustes_probe]"])  # kept again: computed again
    run_transfer(run_dir, ["concept.methods=[none,procrustes_probe]", "concept.save_edited=false",
                           "transfer.procrustes_probe.alpha=10"])
    assert not (run_dir / "checkpoints" / "edited_procrustes_probe").exists()


@pytest.mark.parametrize("overrides", [["transfer.activation_transplant.isolate=true",
                                        "transfer.activation_transplant.layers=[0]"],
                                       ["transfer.activation_transplant.isolate=true",
                                        "transfer.activation_transplant.copy_head_row=false"]])
def test_an_isolated_transplant_that_cannot_reach_the_target_row_is_refused(tmp_path, caplog, overrides):
    _refused(caplog, tmp_path / "run", ["concept.methods=[activation_transplant]", *overrides],
             "transfer.activation_transplant.isolate=true cuts the transplanted units out")


def test_a_strength_given_as_an_integer_is_the_same_setting_as_its_float():
    """`alpha=1` and `alpha=1.0` are one setting: stored alike, so resume and compare.py see one value."""
    from sae_ception.transfer import parse_transfer_config

    for given, stored in (("1", 1.0), ("[1,3]", [1.0, 3.0]), ("2.5", 2.5)):
        cfg = parse_transfer_config(compose_transfer(Path("/nonexistent"), [f"transfer.procrustes_probe.alpha={given}"]))
        assert cfg.transfer["procrustes_probe"].alpha == stored
        assert all(isinstance(a, float) for a in cfg.transfer["procrustes_probe"].alphas)
