"""`objective=family/name`: train_cycle.py measures that metric of its last cycle on the VALIDATION split, writes
results/objective.json, returns it (what Hydra's Optuna sweeper optimises), and reuses it when resumed."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics
from sae_ception.evaluation.objective_metrics import OBJECTIVE_METRICS
from sae_ception.evaluation.report import flatten_metrics
from sae_ception.sae import load_sae
from sae_ception.stages.evaluate import evaluate_split
from sae_ception.stages.objective import measure_objective
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
    path.write_text('{"metric": "performance/accuracy", "spl')
    assert train_cycle(run_dir) == pytest.approx(returned)
    assert "objective.json is damaged (not valid JSON" in caplog.text
    assert json.loads(path.read_text())["value"] == pytest.approx(returned)
    caplog.clear()
    weights = run_dir / "checkpoints" / "sae_cycle_1" / "weights.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # an SAE made again
    assert train_cycle(run_dir) == pytest.approx(returned)
    assert "of other checkpoints; measuring performance/accuracy again" in caplog.text


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
