"""`objective=family/name`: train_cycle.py measures that metric of its last cycle on the VALIDATION split, writes
results/objective.json, returns it (what Hydra's Optuna sweeper optimises), and reuses it when resumed."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from sae_ception.cli import run_task
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics
from sae_ception.evaluation.objective_metrics import OBJECTIVE_METRICS
from sae_ception.evaluation.report import flatten_metrics
from sae_ception.sae import load_sae
from sae_ception.stages.evaluate import evaluate_split
from sae_ception.stages.objective import _what_differs, measure_objective
from tests.conftest import compose_cfg
from tests.pipeline.helpers import expect_one_line_error, run_in_process, snapshot
from tests.pipeline.test_divergence import dead_target_layer

pytestmark = pytest.mark.slow

TRAIN_CYCLE = ENTRYPOINTS["train_cycle"]
SETTINGS = ["cycle.max_cycles=1", "objective=performance/accuracy"]


def train_cycle(run_dir, overrides=SETTINGS):
    """scripts/train_cycle.py's task and preflight, in this process; returns what its main returns."""
    return run_in_process(TRAIN_CYCLE.task, run_dir, overrides, preflight=TRAIN_CYCLE.preflight)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("objective")
    return run_dir, train_cycle(run_dir)


def val_arrays(run_dir, cycle):
    folder = run_dir / "activations" / f"cycle_{cycle}"
    return {kind: np.load(folder / f"val.{kind}.npy") for kind in ("acts", "labels", "logits")}


def test_the_objective_is_the_last_cycles_validation_accuracy_not_a_test_figure(finished):
    run_dir, returned = finished
    val = val_arrays(run_dir, 1)
    accuracy = float((val["logits"].argmax(1) == val["labels"]).mean())  # from the cached logits, by hand
    chosen = json.loads((run_dir / "results" / "auxiliary_cycle_0.json").read_text())["candidates"][0]
    assert isinstance(returned, float)
    assert returned == pytest.approx(accuracy, abs=1e-6) == pytest.approx(chosen["val"]["accuracy"], abs=1e-6)
    test_accuracy = json.loads((run_dir / "results" / "cycle_1.json").read_text())["metrics"]["performance"]["accuracy"]
    assert test_accuracy == pytest.approx(chosen["test"]["accuracy"]) and test_accuracy != pytest.approx(returned)
    record = json.loads((run_dir / "results" / "objective.json").read_text())
    assert {k: record[k] for k in ("metric", "split", "cycle", "direction", "num_examples", "sae_degenerate")} == {
        "metric": "performance/accuracy", "split": "val", "cycle": 1, "direction": "maximize",
        "num_examples": len(val["labels"]), "sae_degenerate": False}
    assert record["value"] == pytest.approx(returned)


def test_an_interpretability_objective_reads_the_validation_codes_of_the_last_sae(finished):
    run_dir, _ = finished
    metric = "monosemanticity_sae/csi_mean"
    record = run_in_process(lambda ctx: measure_objective(ctx, metric, 1), run_dir, SETTINGS)
    val = val_arrays(run_dir, 1)
    sae = load_sae(run_dir / "checkpoints" / "sae_cycle_1")
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(val["acts"]).float())
    expected = monosemanticity_metrics(codes, torch.from_numpy(val["labels"]))["csi_mean"]
    assert record["value"] == pytest.approx(expected, rel=1e-6) and record["split"] == "val"
    test_value = json.loads((run_dir / "results" / "cycle_1.json").read_text())["metrics"]["monosemanticity_sae"]
    assert test_value["csi_mean"] != pytest.approx(record["value"])


def test_the_named_metrics_are_exactly_those_the_evaluation_computes(finished):
    run_dir, _ = finished
    every = run_in_process(lambda ctx: evaluate_split(ctx, 1, "val"), run_dir, SETTINGS)
    assert set(flatten_metrics(every.metrics)) == set(OBJECTIVE_METRICS)
    saved = json.loads((run_dir / "results" / "cycle_1.json").read_text())["metrics"]
    assert {k for k in flatten_metrics(saved) if not k.startswith("auxiliary/")} == set(OBJECTIVE_METRICS)


def test_a_finished_run_reuses_its_objective_and_measures_again_when_it_cannot(finished, caplog):
    run_dir, returned = finished
    path = run_dir / "results" / "objective.json"
    before = snapshot(run_dir)
    caplog.set_level("INFO")
    assert train_cycle(run_dir) == returned
    assert snapshot(run_dir) == before and "reusing it (resume)" in caplog.text
    good = path.read_text()
    for damaged, why in (('{"metric": "performance/accuracy", "spl', "not valid JSON"),
                         (good.replace('"other_metrics": {}', '"other_metrics": []'),
                          "not a record with other_metrics"),
                         (good.replace('"cycle": 1,', ''), "no cycle")):
        assert damaged != good
        path.write_text(damaged)
        caplog.clear()
        assert train_cycle(run_dir) == pytest.approx(returned)
        assert f"objective.json is damaged ({why}" in caplog.text
        assert json.loads(path.read_text())["value"] == pytest.approx(returned)
    caplog.clear()
    weights = run_dir / "checkpoints" / "sae_cycle_1" / "weights.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # an SAE made again
    assert train_cycle(run_dir) == pytest.approx(returned)
    assert ("objective.json: sae_cycle_1 was written again since it was measured; measuring performance/accuracy "
            "on the val split at cycle 1") in caplog.text


MSE = ["cycle.max_cycles=1", "objective=sae/mse"]


def test_switching_the_objective_measures_each_metric_once_and_says_only_the_metric_differs(finished, caplog):
    run_dir, _ = finished
    path = run_dir / "results" / "objective.json"
    accuracy = train_cycle(run_dir)  # the file's own record: accuracy on the current checkpoints
    caplog.set_level("INFO")
    caplog.clear()
    mse = train_cycle(run_dir, MSE)
    assert ("objective.json: it holds performance/accuracy, not sae/mse (measured on these checkpoints); measuring "
            "sae/mse on the val split at cycle 1") in caplog.text
    assert "written again" not in caplog.text and "not the last cycle" not in caplog.text
    after_mse = json.loads(path.read_text())
    assert after_mse["metric"] == "sae/mse" and after_mse["value"] == pytest.approx(mse) and mse != accuracy
    assert list(after_mse["other_metrics"]) == ["performance/accuracy"]
    assert after_mse["other_metrics"]["performance/accuracy"]["value"] == pytest.approx(accuracy)
    for overrides, value in ((SETTINGS, accuracy), (MSE, mse)):  # back and forth: nothing is measured again
        caplog.clear()
        assert train_cycle(run_dir, overrides) == value
        assert "reusing it (resume)" in caplog.text and "measuring" not in caplog.text
        assert json.loads(path.read_text())["metric"] == overrides[1].split("=")[1]
    assert json.loads(path.read_text()) == after_mse


STAMPS = {"model": [1, 2], "sae": [3, 4]}


@pytest.mark.parametrize("change, metric, says", [
    ({}, "sae/mse", "it holds performance/accuracy, probe/dense_accuracy, not sae/mse (measured on these checkpoints)"),
    ({"split": "test"}, "performance/accuracy", "it was measured on the test split, not val"),
    ({"cycle": 0}, "performance/accuracy", "it is for cycle 0, not the last cycle 1"),
    ({"artifacts": {"model": [1, 2], "sae": [3, 5]}}, "performance/accuracy",
     "sae_cycle_1 was written again since it was measured"),
    ({"artifacts": {"model": [0, 2], "sae": [3, 5]}}, "performance/accuracy",
     "model_cycle_1 and sae_cycle_1 were written again since it was measured"),
    ({"cycle": 0}, "sae/mse", "it holds performance/accuracy, probe/dense_accuracy, not sae/mse; it is for cycle 0, "
                              "not the last cycle 1"),
])
def test_the_log_line_names_what_the_saved_record_differs_in(change, metric, says):
    record = {"metric": "performance/accuracy", "split": "val", "cycle": 1, "artifacts": STAMPS}
    saved = {**record, "other_metrics": {"probe/dense_accuracy": {**record, "metric": "probe/dense_accuracy"}}}
    assert _what_differs({**saved, **change}, metric, 1, STAMPS) == says


def test_objective_null_leaves_an_earlier_record_unread_and_unchanged(finished, caplog):
    run_dir, _ = finished
    path = run_dir / "results" / "objective.json"
    assert train_cycle(run_dir, MSE) == pytest.approx(json.loads(path.read_text())["value"])
    before = {name: digest for name, digest in snapshot(run_dir).items() if name != "config.yaml"}
    caplog.set_level("INFO")
    caplog.clear()  # only the second command's lines (an earlier test may have left INFO on: the first's are caught)
    assert train_cycle(run_dir, ["cycle.max_cycles=1", "objective=null"]) is None
    assert "objective: null" in (run_dir / "config.yaml").read_text()  # the run's settings now: no objective
    assert {name: digest for name, digest in snapshot(run_dir).items() if name != "config.yaml"} == before
    assert json.loads(path.read_text())["metric"] == "sae/mse"  # a record of what it names, left as it was
    assert "objective=null: " in caplog.text and "not this run's objective" in caplog.text
    assert "objective sae/mse =" not in caplog.text and "objective performance/accuracy =" not in caplog.text


@pytest.mark.parametrize("script", ["train_baseline", "train_sae", "train_auxiliary"])
def test_scripts_that_measure_no_objective_refuse_it(caplog, tmp_path, script):
    entry = ENTRYPOINTS[script]
    expect_one_line_error(caplog, tmp_path / "run", ["objective=performance/accuracy"],
                          f"objective=performance/accuracy: the objective is measured by scripts/train_cycle.py (on "
                          f"the validation split, after its last cycle), not by scripts/{script}.py; drop it here",
                          task=entry.task, preflight=entry.preflight)
    assert not (tmp_path / "run").exists()


def test_evaluate_takes_the_runs_objective_from_its_folder_and_refuses_one_given(finished, caplog):
    """evaluate.py reads every setting from the run's config.yaml, which records objective: that is no refusal."""
    run_dir, _ = finished
    entry = ENTRYPOINTS["evaluate"]
    train_cycle(run_dir)  # the run's settings record objective=performance/accuracy
    assert "objective: performance/accuracy" in (run_dir / "config.yaml").read_text()
    results = run_task(compose_cfg(run_dir, ["eval_cycle=1"], base=["progress=false", "plots=false"]), entry.task,
                       entry.preflight, from_run_folder=True)
    assert [r["cycle"] for r in results] == [1]
    expect_one_line_error(caplog, run_dir, ["objective=sae/mse"], "objective=sae/mse: this script takes every "
                          "setting of the run from", task=entry.task, preflight=entry.preflight,
                          base=["progress=false", "plots=false"], from_run_folder=True)


@pytest.mark.parametrize("overrides, match", [
    (["objective=performance/acuracy"], "objective='performance/acuracy' is not a metric the search can use; did you "
                                        "mean performance/accuracy? (valid, as family/name: performance/{accuracy,"),
    (["objective=auxiliary/val_accuracy"], "the auxiliary family records how a model was trained"),
    (["objective=sae/mse", "dataset.val_fraction=0"],
     "objective=sae/mse is measured on the validation split, but dataset.val_fraction=0; set it > 0"),
])
def test_a_bad_objective_stops_before_anything_is_trained(caplog, tmp_path, overrides, match):
    expect_one_line_error(caplog, tmp_path / "run", overrides, match, task=TRAIN_CYCLE.task,
                          preflight=TRAIN_CYCLE.preflight)
    assert not (tmp_path / "run").exists()


def test_an_undefined_objective_is_nan_and_null(tmp_path, caplog):
    """A dead target layer gives an SAE none of whose latents fires: its code metrics are undefined."""
    source = tmp_path / "source"
    run_in_process(ENTRYPOINTS["train_cycle"].task, source, ["cycle.max_cycles=0"])
    model = dead_target_layer(source, tmp_path / "dead")
    run_dir = tmp_path / "run"
    returned = train_cycle(run_dir, [f"inputs.model={model}", "cycle.max_cycles=0",
                                     "objective=monosemanticity_sae/csi_mean"])
    assert math.isnan(returned)
    record = json.loads((run_dir / "results" / "objective.json").read_text())
    assert record["value"] is None and record["sae_degenerate"] is True
    assert "is undefined on the val split at cycle 0 (the SAE is degenerate there" in caplog.text
