"""Hydra launcher plugins: a sweep whose jobs run in parallel processes on this machine (hydra/launcher=joblib),
and the SLURM example (hydra/launcher=slurm), composed and rendered into its sbatch header but never submitted."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from omegaconf import OmegaConf

from sae_ception.sweep_errors import one_line_plugin_errors
from sae_ception.utils.device import usable_cpus
from tests.conftest import PROJECT_ROOT, TINY, compose_cfg, run_script
from tests.fake_wandb import wandb_calls, write_fake_wandb

pytestmark = pytest.mark.slow


def test_a_two_job_sweep_runs_in_two_processes_each_in_its_own_folder(tmp_path, monkeypatch):
    fake = write_fake_wandb(tmp_path / "fake")  # records each job's wandb.init, in whichever process it runs
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FAKE_WANDB_LOG", str(tmp_path / "wandb_calls.jsonl"))
    sweep = tmp_path / "multirun" / "pair"
    proc = run_script("train_cycle.py", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                      "wandb.mode=offline", "cycle.max_cycles=1", "cycle.aux_loss_weight=0.1,0.5",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in proc.stdout
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    weights = [yaml.safe_load((job / "config.yaml").read_text())["cycle"]["aux_loss_weight"] for job in jobs]
    assert weights == [0.1, 0.5]
    for job, weight in zip(jobs, weights):
        assert {p.name for p in (job / "results").glob("cycle_*.json")} == {"cycle_0.json", "cycle_1.json"}
        record = json.loads((job / "results" / "auxiliary_cycle_0.json").read_text())
        assert record["chosen_weight"] == weight and record["candidates"][0]["val"]["accuracy"] > 0
        assert (job / "train_cycle.log").is_file() and not (job / ".lock.owner").exists()
    inits = wandb_calls(tmp_path / "wandb_calls.jsonl", "init")
    assert len({i["pid"] for i in inits}) == 2, "the two jobs ran in two worker processes"
    assert [i["kwargs"]["group"] for i in inits] == ["multirun/pair"] * 2  # one sweep, one wandb group
    assert {i["kwargs"]["dir"] for i in inits} == {str(job) for job in jobs}
    assert [i["threads"] for i in inits] == [max(1, usable_cpus() // 2)] * 2  # threads=auto shares the CPUs


def launcher(*overrides: str):
    return compose_cfg(PROJECT_ROOT, list(overrides)).hydra.launcher


def test_the_slurm_example_composes_and_becomes_this_sbatch_header(tmp_path, monkeypatch):
    cfg = launcher("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert {k: cfg[k] for k in ("partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb",
                                "timeout_min", "array_parallelism", "max_num_timeout")} == {
        "partition": "gpu", "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
        "timeout_min": 240, "array_parallelism": 16, "max_num_timeout": 3}
    assert cfg.submitit_folder == f"{tmp_path / 'sweep'}/.submitit/%j"
    # what sbatch would receive: the plugin's own parameter mapping (submitit_launcher.py, launch), with a stand-in
    # `srun` on PATH so submitit builds its SLURM executor here; nothing is submitted
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "_target_"}
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()} | {"name": "job"})
    header = executor._executor._make_submission_file_text("python job.py", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--time=240"):
        assert f"#SBATCH {line}\n" in header, header


def test_the_plugins_own_launchers_are_selectable_too():
    slurm = launcher("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "debug" and slurm.gpus_per_node is None
    local = launcher("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    assert local._target_.endswith("LocalLauncher") and local.timeout_min == 5
    joblib = launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2


def test_slurm_where_there_is_none_is_one_line(capsys):
    """submitit's own error on a machine without SLURM, as train_cycle.py's guard turns it."""
    import shutil

    import submitit

    if shutil.which("srun"):
        pytest.skip("this machine has SLURM's srun")
    with pytest.raises(SystemExit) as exit_info, one_line_plugin_errors():
        submitit.AutoExecutor(folder="unused", cluster="slurm")
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "error: hydra/launcher=slurm (or submitit_slurm) submits through SLURM, but " \
                                     "this machine has no srun" in out


def test_a_misspelt_launcher_setting_is_one_line(tmp_path):
    proc = run_script("train_cycle.py", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partiton=gpu", "seed=0,1",
                      cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert "error: hydra.launcher.partiton is not a setting; did you mean hydra.launcher.partition?" in proc.stdout
    assert not (tmp_path / "multirun").exists()
