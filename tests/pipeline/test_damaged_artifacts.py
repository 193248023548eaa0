"""Damaged files in a run folder: a primary artifact (checkpoint, config) stops the run in one line naming the file
and what to do, before any training and touching nothing; a cache (activations, tokens) is recomputed."""

import shutil

import numpy as np
import pytest

from sae_ception.cli import run_task
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.cycle import run_cycles
from tests.conftest import compose_cfg
from tests.pipeline.helpers import expect_one_line_error, final_metrics, run_in_process, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=1"])
    return run_dir


@pytest.fixture
def run(finished_run, tmp_path):
    """A private copy of the finished run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path):
    path.write_bytes(b"\x00\xffnot what it should be {[")


DAMAGE = {
    "truncated SAE weights": ("checkpoints/sae_cycle_0/weights.safetensors", truncate, "is damaged or truncated"),
    "truncated model weights": ("checkpoints/model_cycle_1/weights.safetensors", truncate, "is damaged or truncated"),
    "garbage model weights": ("checkpoints/model_cycle_0/weights.safetensors", garbage, "is damaged or truncated"),
    "garbage checkpoint config": ("checkpoints/sae_cycle_1/config.json", garbage, "is damaged (not valid JSON"),
    "checkpoint config not an object": ("checkpoints/model_cycle_0/config.json",
                                        lambda p: p.write_text("[1, 2]"), "is damaged (not a JSON object)"),
    "garbage run config": ("config.yaml", garbage, "config.yaml is damaged"),
    "run config not a mapping": ("config.yaml", lambda p: p.write_text("- just\n- a list\n"), "config.yaml is damaged"),
    "run config with a YAML syntax error": ("config.yaml", lambda p: p.write_text("[[[\n"), "config.yaml is damaged"),
    "truncated run config": ("config.yaml", lambda p: p.write_text(p.read_text()[:300]), "config.yaml is damaged"),
    "empty run config": ("config.yaml", lambda p: p.write_text(""), "config.yaml is damaged (empty)"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_primary_artifact_is_one_line_naming_it(caplog, run, name):
    relative, damage, match = DAMAGE[name]
    damage(run / relative)
    message = expect_one_line_error(caplog, run, ["cycle.max_cycles=2"], match,
                                    preflight=ENTRYPOINTS["train_cycle"].preflight)
    assert str(run / relative) in message
    assert "delete" in message or "restore" in message  # says what to do


@pytest.mark.parametrize("name", ["garbage run config", "run config with a YAML syntax error", "truncated run config",
                                  "empty run config", "truncated SAE weights"])
def test_evaluate_names_the_damaged_file_too(caplog, run, name):
    relative, damage, match = DAMAGE[name]
    damage(run / relative)
    entry = ENTRYPOINTS["evaluate"]
    message = expect_one_line_error(caplog, run, [], match, task=entry.task, preflight=entry.preflight,
                                    base=["progress=false"], from_run_folder=True)
    assert str(run / relative) in message


def nan_rows(path):
    array = np.load(path)
    array[3:5] = np.nan
    np.save(path, array)


def wrong_shape(path):
    np.save(path, np.load(path)[:, :-1])


CACHE_DAMAGE = {
    "truncated": truncate,
    "garbage": garbage,
    "NaN rows": nan_rows,
    "wrong shape": wrong_shape,
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("kind", list(CACHE_DAMAGE))
@pytest.mark.parametrize("file", ["train.acts.npy", "test.logits.npy"])
def test_damaged_cached_activations_are_recomputed(caplog, run, kind, file):
    before = final_metrics(run)
    CACHE_DAMAGE[kind](run / "activations" / "cycle_1" / file)
    entry = ENTRYPOINTS["evaluate"]
    run_task(compose_cfg(run, ["eval_cycle=1"], base=["progress=false"]), entry.task, entry.preflight, from_run_folder=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "recomputing" in r.getMessage()]
    assert len(warnings) == 1 and file in warnings[0], warnings
    assert final_metrics(run) == before  # the recomputed cache gives the very same results
    assert np.isfinite(np.load(run / "activations" / "cycle_1" / file)).all()


def test_activations_of_other_data_are_recomputed(caplog, run):
    labels = run / "activations" / "cycle_0" / "val.labels.npy"
    np.save(labels, np.roll(np.load(labels), 1))
    before = snapshot(run)
    run_in_process(lambda ctx: activations_for_cycle(ctx, 0), run, ["cycle.max_cycles=1"])
    assert any("holds the labels of other data" in r.getMessage() for r in caplog.records)
    assert snapshot(run) != before


@pytest.mark.parametrize("damage", [truncate, garbage, lambda p: p.write_text('{"cycle": 1, "metrics": [1, 2]}')])
def test_a_damaged_results_file_is_evaluated_again_on_resume(caplog, run, damage):
    before = final_metrics(run)
    damage(run / "results" / "cycle_1.json")
    run_in_process(run_cycles, run, ["cycle.max_cycles=1"])
    assert any("cycle_1.json is damaged" in r.getMessage() and "evaluating again" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    assert final_metrics(run) == before


@pytest.mark.parametrize("damage", [truncate, garbage, lambda p: p.unlink()])
def test_damaged_unit_scores_are_evaluated_again_on_resume(caplog, run, damage):
    """results/units_cycle_N.safetensors is written with results/cycle_N.json: both, or the cycle is evaluated again."""
    before = final_metrics(run)
    damage(run / "results" / "units_cycle_1.safetensors")
    run_in_process(run_cycles, run, ["cycle.max_cycles=1", "plots=true"])
    assert any("units_cycle_1.safetensors" in r.getMessage() and "evaluating again" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    assert final_metrics(run) == before
    assert (run / "plots" / "sae_codes_pca.png").is_file()


def test_plots_leave_out_a_cycle_without_unit_scores_and_say_so(caplog, run):
    """A cycle before the resumed range (cycle.current=1) is not evaluated again: its plots skip it, with a warning."""
    (run / "results" / "units_cycle_0.safetensors").write_bytes(b"garbage")
    run_in_process(run_cycles, run, ["cycle.max_cycles=1", "cycle.current=1", "plots=true"])
    assert any("plots leave out cycle 0" in r.getMessage() and "eval_cycle=0" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
