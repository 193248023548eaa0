"""`hydra/sweeper=optuna` (hydra-optuna-sweeper): each trial is a run that returns its validation objective;
experiment=optuna_search searches lambda, the sharpening top-k% and the SAE's L1 penalty."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.sweep_errors import one_line_plugin_errors
from tests.conftest import PROJECT_ROOT, TINY, compose_cfg, run_script
from tests.pipeline.helpers import expect_one_line_error, run_in_process
from tests.pipeline.test_divergence import dead_target_layer

pytestmark = pytest.mark.slow

SEARCH = ["experiment=[smoke,optuna_search]", *TINY[1:], "cycle.max_cycles=1"]
# the range of sae.l1_coefficient given on the command line replaces the one in experiment=optuna_search
L1_RANGE = "sae.l1_coefficient=tag(log, interval(0.02, 0.05))"
SEARCHED = {"cycle.aux_loss_weight": (0.01, 1.0), "sharpening.top_k_pct": (2.0, 30.0), "sae.l1_coefficient": (0.02, 0.05)}


def setting(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def test_a_three_trial_search_returns_each_validation_objective_and_keeps_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("train_cycle.py", "--multirun", *SEARCH, "hydra.sweeper.n_trials=3", L1_RANGE,
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Directions: ['maximize']" in proc.stdout and "setup plugin alembic" not in proc.stdout
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2"]
    trials = []
    for job in jobs:
        config = yaml.safe_load((job / "config.yaml").read_text())
        record = json.loads((job / "results" / "objective.json").read_text())
        assert config["objective"] == record["metric"] == "monosemanticity_dense/csi_mean"
        assert record["split"] == "val" and record["cycle"] == 1 and math.isfinite(record["value"])
        params = {key: setting(config, key) for key in SEARCHED}
        assert all(low <= params[key] <= high for key, (low, high) in SEARCHED.items()), params
        trials.append((record["value"], params))
    assert len({tuple(p.values()) for _, p in trials}) == 3, "each trial must try other settings"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    value, params = max(trials, key=lambda t: t[0])
    assert best["best_value"] == pytest.approx(value) and best["best_params"] == pytest.approx(params)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A trained model 0, and the same model with its target layer dead (its SAE cannot fire: undefined codes)."""
    source = tmp_path_factory.mktemp("source")
    run_in_process(ENTRYPOINTS["train_cycle"].task, source, ["cycle.max_cycles=0"])
    return source / "checkpoints" / "model_cycle_0", dead_target_layer(source, tmp_path_factory.mktemp("dead") / "model")


def test_an_undefined_objective_fails_its_trial_and_the_search_goes_on(tmp_path, models):
    good, dead = models
    sweep = tmp_path / "sweep"
    # seeded random sampling of the two models: trial 0 gets the good one, trial 1 (the last) the dead one
    proc = run_script("train_cycle.py", "--multirun", *TINY, "cycle.max_cycles=0", "hydra/sweeper=optuna",
                      "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.direction=maximize", "objective=monosemanticity_sae/csi_mean",
                      f"inputs.model=choice({dead},{good})", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((sweep / job / "results" / "objective.json").read_text()) for job in ("0", "1")]
    assert records[1]["value"] is None and records[1]["sae_degenerate"] is True
    assert "Failed experiment: Return value must be float-castable. Got 'None'." in proc.stdout
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(records[0]["value"]) and best["best_params"] == {"inputs.model": str(good)}


def test_a_search_where_no_trial_completed_ends_in_one_line(capsys):
    """What Optuna raises when asked for the best of only failed trials, as train_cycle.py's guard turns it."""
    study = optuna.create_study()
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(SystemExit) as exit_info, one_line_plugin_errors():
        study.best_trial
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "[sae_ception][ERROR] - error: no trial of the Optuna search completed" in out


def task_settings(overrides: list[str]) -> list[str]:
    """The run's own settings among `overrides` (Hydra's `hydra.*` ones configure the sweep, not the run)."""
    return [o for o in overrides if not o.startswith("hydra")]


@pytest.fixture
def in_optuna_sweep(tmp_path):
    """This process as a job of an Optuna sweep (Hydra's config of the job, in multirun mode)."""

    def enter(*overrides: str) -> None:
        cfg = compose_cfg(PROJECT_ROOT, ["hydra/sweeper=optuna", *overrides])
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
        HydraConfig.instance().set_config(cfg)

    yield enter
    HydraConfig.instance().cfg = None


@pytest.mark.parametrize("overrides, match", [
    ([], "hydra/sweeper=optuna optimises what each job returns, but objective=null; set objective=family/name"),
    (["objective=performance/accuracy"],
     "hydra.sweeper.direction=minimize, but objective=performance/accuracy is better higher; set "
     "hydra.sweeper.direction=maximize"),
    (["objective=sae/mse", "hydra.sweeper.direction=maximize"], "objective=sae/mse is better lower"),
    (["objective=sae/mse", "hydra.sweeper.direction=[minimize,maximize]"],
     "hydra.sweeper.direction=[minimize,maximize] asks for several objectives, but a job returns one value"),
    (["objective=sae/mse", "hydra.sweeper.direction=MINIMIZE"],
     "hydra.sweeper.direction=MINIMIZE is not a direction; did you mean minimize? (valid: maximize, minimize, in "
     "lower case)"),
    (["objective=sae/mse", "hydra.sweeper.direction=minimise"], "hydra.sweeper.direction=minimise is not a direction; "
                                                                "did you mean minimize?"),
    (["objective=sae/mse", "hydra.sweeper.direction=[]"], "hydra.sweeper.direction=[] is not a direction (valid:"),
    (["objective=sae/mse", "hydra.sweeper.direction=1"], "hydra.sweeper.direction=1 is not a direction (valid:"),
    (["objective=sae/mse", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 must be a positive integer"),
    (["objective=sae/mse", "hydra.sweeper.n_trials=-2"], "hydra.sweeper.n_trials=-2 must be a positive integer"),
    (["objective=sae/mse", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 must be a positive integer"),
    (["objective=sae/mse", "hydra.sweeper.max_failure_rate=1.5"],
     "hydra.sweeper.max_failure_rate=1.5 must be a number in [0, 1]"),
])
def test_a_search_that_cannot_work_stops_before_training(caplog, tmp_path, in_optuna_sweep, overrides, match):
    in_optuna_sweep(*overrides)
    entry = ENTRYPOINTS["train_cycle"]
    expect_one_line_error(caplog, tmp_path / "run", task_settings(overrides), match, task=entry.task,
                          preflight=entry.preflight)
    assert not (tmp_path / "run").exists()


def test_a_search_in_the_metrics_better_way_is_accepted(tmp_path, in_optuna_sweep):
    """The same check passes for `sae/l0` (no better way) in either direction and for `sae/mse` minimised."""
    from sae_ception.config import parse_config

    for overrides in (["objective=sae/mse"], ["objective=sae/l0", "hydra.sweeper.direction=maximize"],
                      ["objective=performance/accuracy", "hydra.sweeper.direction=[maximize]"],
                      ["objective=sae/mse", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
                       "hydra.sweeper.max_failure_rate=1.0"]):
        in_optuna_sweep(*overrides)
        assert parse_config(compose_cfg(tmp_path / "run", task_settings(overrides))).objective == overrides[0][10:]


TINY_SWEEP = [*TINY, "cycle.max_cycles=0", "hydra/sweeper=optuna", "objective=sae/mse", "hydra.sweeper.n_trials=1"]


@pytest.mark.parametrize("override, line", [
    ("hydra.sweeper.direction=MINIMIZE", "hydra.sweeper.direction=MINIMIZE is not a direction; did you mean minimize? "
                                         "(valid: maximize, minimize, in lower case)"),
    ("hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.direction=[minimize,minimize] asks for several "
                                                    "objectives, but a job returns one value"),
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be a positive integer: the number of trials"),
    ("hydra.sweeper.params.sae.l1_coeficient=interval(0.001,0.1)",
     "hydra.sweeper.params.sae.l1_coeficient=interval(0.001,0.1): an entry of hydra.sweeper.params cannot be given on "
     "the command line (Hydra reads the dots of its name as nesting, and a range there as a sweep of its own "
     "settings); give the range as the setting itself, 'sae.l1_coeficient=interval(0.001,0.1)', which replaces"),
    ("hydra.sweeper.params.sae.l1_coefficient='interval(0.001,0.1)'",  # OmegaConf's AssertionError, params null
     "hydra.sweeper.params.sae.l1_coefficient='interval(0.001,0.1)': an entry of hydra.sweeper.params cannot be "
     "given on the command line"),
])
def test_bad_sweeper_settings_stop_the_sweep_in_one_line_before_any_job(tmp_path, override, line):
    """Optuna's own refusals are tracebacks (`Please set either 'minimize' or 'maximize'`), or misleading (0 trials
    read as "no trial completed"): the sweep's process refuses these settings before the study is created."""
    sweep = tmp_path / "sweep"
    proc = run_script("train_cycle.py", "--multirun", *TINY_SWEEP, override, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "" and proc.stdout.count("\n") == 1, proc.stdout + proc.stderr
    assert f"[sae_ception][ERROR] - error: {line}" in proc.stdout
    assert not sweep.exists() or not any(sweep.rglob("*"))


def test_a_search_space_entry_naming_no_setting_stops_at_the_first_job_in_one_line(tmp_path):
    """A range given as the setting itself, misspelt: the first job's config is refused by name."""
    sweep = tmp_path / "sweep"
    proc = run_script("train_cycle.py", "--multirun", *TINY_SWEEP, "sae.l1_coeficient=interval(0.001,0.1)",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1
    assert "error: sae.l1_coeficient is not a setting; did you mean sae.l1_coefficient?" in errors[0]
    assert not any(p.is_file() for p in sweep.rglob("*")) if sweep.exists() else True
