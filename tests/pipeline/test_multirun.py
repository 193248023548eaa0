"""A --multirun sweep: every job has its own folder and touches nothing outside it."""

import json

import pytest
import yaml

from tests.conftest import TINY, run_script

pytestmark = pytest.mark.slow


def test_two_jobs_do_not_share_files(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train_cycle.py", "--multirun", *TINY, "cycle.max_cycles=1", "seed=0,1", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    files = {job.name: {str(p.relative_to(job)) for p in job.rglob("*") if p.is_file()} for job in jobs}
    assert files["0"] == files["1"] and "results/cycle_1.json" in files["0"]
    seeds = [yaml.safe_load((job / "config.yaml").read_text())["seed"] for job in jobs]
    assert seeds == [0, 1]
    for job in jobs:  # each job's config and checkpoints point inside its own folder only
        result = json.loads((job / "results" / "cycle_0.json").read_text())
        assert result["model"].startswith(str(job))
    metrics = [json.loads((job / "results" / "cycle_1.json").read_text())["metrics"] for job in jobs]
    assert metrics[0] != metrics[1], "different seeds must give different runs"
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and sweep not in p.parents]
    assert outside == [], f"files written outside the job folders: {outside}"
