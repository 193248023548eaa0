"""scripts/evaluate.py: re-evaluates a run folder from its own config, without training."""

import json

import pytest

from sae_ception.cli import run_task
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.stages.cycle import run_cycles
from tests.conftest import compose_cfg, run_script
from tests.pipeline.helpers import final_metrics, run_in_process, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=1"])
    return run_dir


def reevaluate(run_dir, overrides=(), base=("progress=false", "plots=false")):
    entry = ENTRYPOINTS["evaluate"]
    # only run_dir and these are given: every other setting (the defaults differ from the run's) comes from the run
    return run_task(compose_cfg(run_dir, list(overrides), base=list(base)), entry.task, entry.preflight,
                    from_run_folder=True)


def test_recomputes_the_same_numbers_without_training(run):
    before = final_metrics(run)
    checkpoints = {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")}
    (run / "results" / "cycle_1.json").unlink()
    results = reevaluate(run)
    assert [r["cycle"] for r in results] == [0, 1]
    assert final_metrics(run) == before
    assert {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")} == checkpoints


def test_one_cycle_only(run):
    untouched = (run / "results" / "cycle_0.json").stat().st_mtime_ns
    results = reevaluate(run, ["eval_cycle=1"])
    assert [r["cycle"] for r in results] == [1]
    assert (run / "results" / "cycle_0.json").stat().st_mtime_ns == untouched
    assert len((run / "results" / "summary.csv").read_text().splitlines()) == 3  # header + cycles 0 and 1


def test_settings_come_from_the_run_not_the_defaults(run):
    """The run was made with wandb disabled and a [32,16] MLP; the defaults say wandb offline and [64,64]."""
    reevaluate(run)
    assert not (run / "wandb").exists(), "re-evaluation must not switch wandb on for a run made with it disabled"


@pytest.mark.parametrize("override", ["model.hidden_sizes=[64,64]", "model.hidden_sizes=[32,16]", "sae.l1_coefficient=0.5",
                                      "seed=3", "seed=0", "sharpening=random", "experiment=mnist_paper"])
def test_a_training_setting_is_refused_not_ignored_whatever_its_value(run, caplog, override):
    """Its value would be ignored (the run's config.yaml wins), so it is refused, even when equal to the run's."""
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        reevaluate(run, [override])
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"error: {override}: this script takes every setting of the run "
                                                     f"from {run / 'config.yaml'}"), errors
    assert snapshot(run) == before


def test_real_command_refuses_a_key_the_default_sae_does_not_have(run):
    """sae.k is not a key of the default ReLU SAE Hydra composes before the run's settings are read: the line
    must still say why it is refused, not call it misspelt."""
    proc = run_script("evaluate.py", f"run_dir={run}", "sae.k=4", "wandb.mode=disabled")
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout + proc.stderr
    assert "sae.k=4: this script takes every setting of the run from" in errors[0], errors[0]


def test_real_command_needs_only_run_dir(run):
    proc = run_script("evaluate.py", f"run_dir={run}", "wandb.mode=disabled", "progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "results" / "cycle_1.json").read_text())["cycle"] == 1


def test_folder_without_a_run_is_one_line(tmp_path):
    proc = run_script("evaluate.py", f"run_dir={tmp_path / 'empty'}", "wandb.mode=disabled")
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "holds no config.yaml" in errors[0]
