"""wandb groups: every job of one --multirun sweep logs to the sweep's group unless the user names one, and the run
records the group it used. A stand-in wandb module records what the product asks of wandb."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sae_ception.config import WandbConfig
from sae_ception.utils.tracking import GROUP_FILE, MAX_GROUP, Tracker
from tests.conftest import PROJECT_ROOT, compose_cfg
from tests.fake_wandb import wandb_calls

@pytest.fixture
def in_sweep(tmp_path):
    """This process as a job of a --multirun sweep launched from `launched` with hydra.sweep.dir=`sweep_dir`."""

    def enter(sweep_dir: str, launched: Path) -> None:
        cfg = compose_cfg(PROJECT_ROOT)
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir, cfg.hydra.runtime.cwd = sweep_dir, str(launched)
        HydraConfig.instance().set_config(cfg)

    yield enter
    HydraConfig.instance().cfg = None


def start(run_dir: Path, **wandb) -> Tracker:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = WandbConfig(mode="offline", **wandb)
    return Tracker(cfg, run_dir, config={"seed": 0, "wandb": {"mode": "offline", "group": cfg.group}})


def test_every_job_of_a_sweep_logs_to_the_sweeps_group_and_records_it(tmp_path, fake_wandb, in_sweep, caplog):
    caplog.set_level(logging.INFO)
    in_sweep("multirun/2026-11-30/05-12-00", tmp_path)
    for job in ("0", "1"):
        start(tmp_path / "multirun" / "2026-11-30" / "05-12-00" / job)
    inits = wandb_calls(fake_wandb, "init")
    assert [i["kwargs"]["group"] for i in inits] == ["multirun/2026-11-30/05-12-00"] * 2
    assert [i["kwargs"]["config"]["wandb"]["group"] for i in inits] == ["multirun/2026-11-30/05-12-00"] * 2
    record = tmp_path / "multirun" / "2026-11-30" / "05-12-00" / "1" / GROUP_FILE
    assert record.read_text() == "multirun/2026-11-30/05-12-00\n"
    assert "wandb group: multirun/2026-11-30/05-12-00 (this sweep's; wandb.group=... sets another)" in caplog.text


def test_a_claimed_absolute_sweep_folder_gives_the_same_name(tmp_path, fake_wandb, in_sweep):
    """ClaimSweepFolder hands the jobs the resolved absolute folder: the name stays relative to the launch folder."""
    in_sweep(str((tmp_path / "multirun" / "a_faithful").resolve()), tmp_path)
    start(tmp_path / "multirun" / "a_faithful" / "0")
    assert wandb_calls(fake_wandb, "init")[0]["kwargs"]["group"] == "multirun/a_faithful"


def test_a_group_the_user_sets_wins(tmp_path, fake_wandb, in_sweep):
    in_sweep("multirun/x", tmp_path)
    start(tmp_path / "multirun" / "x" / "0", group="ablation-7")
    assert wandb_calls(fake_wandb, "init")[0]["kwargs"]["group"] == "ablation-7"
    assert (tmp_path / "multirun" / "x" / "0" / GROUP_FILE).read_text() == "ablation-7\n"


def test_a_single_run_has_no_group(tmp_path, fake_wandb):
    start(tmp_path / "run")
    assert wandb_calls(fake_wandb, "init")[0]["kwargs"]["group"] is None
    assert not (tmp_path / "run" / GROUP_FILE).exists()


def test_a_sweep_outside_the_launch_folder_is_named_by_its_path_cut_to_wandbs_limit(tmp_path, fake_wandb, in_sweep):
    deep = tmp_path / "elsewhere" / ("d" * 150)
    in_sweep(str(deep), tmp_path / "launched_here")
    start(deep / "0")
    group = wandb_calls(fake_wandb, "init")[0]["kwargs"]["group"]
    assert len(group) == MAX_GROUP and str(deep.resolve()).endswith(group)


def test_the_objective_goes_to_the_runs_summary(tmp_path, fake_wandb):
    tracker = start(tmp_path / "run")
    tracker.log_objective("performance/accuracy", 0.9, "val", 2)
    tracker.log_objective("monosemanticity_sae/csi_mean", None, "val", 2)
    summaries = [s["values"] for s in wandb_calls(fake_wandb, "summary")]
    assert summaries == [{"objective/value": 0.9, "objective/metric": "performance/accuracy", "objective/split": "val",
                          "objective/cycle": 2},
                         {"objective/value": None, "objective/metric": "monosemanticity_sae/csi_mean",
                          "objective/split": "val", "objective/cycle": 2}]
