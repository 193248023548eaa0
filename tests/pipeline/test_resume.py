"""Kill-and-resume: a run stopped after the SAE stage and resumed ends with the same numbers."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sae_ception.stages.baseline import run_baseline
from sae_ception.stages.cycle import run_cycles
from sae_ception.stages.sae import run_sae
from tests.conftest import PROJECT_ROOT, TINY
from tests.pipeline.helpers import final_metrics, run_in_process, snapshot

pytestmark = pytest.mark.slow


def test_resume_after_sae_stage_matches_uninterrupted(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_in_process(run_cycles, whole, ["cycle.max_cycles=2"])

    run_in_process(run_baseline, resumed, ["cycle.max_cycles=2"])  # stopped after baseline + SAE 0 ...
    run_in_process(lambda ctx: run_sae(ctx, 0), resumed, ["cycle.max_cycles=2"])
    before = snapshot(resumed)
    run_in_process(run_cycles, resumed, ["cycle.max_cycles=2"])  # ... and resumed
    after = snapshot(resumed)
    assert all(after[name] == digest for name, digest in before.items() if name != "config.yaml"), \
        "resume must reuse finished artifacts untouched"
    assert final_metrics(resumed) == final_metrics(whole)


def test_extending_a_finished_run_adds_cycles(tmp_path):
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=1"])
    first = final_metrics(tmp_path)
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=2"])
    extended = final_metrics(tmp_path)
    assert set(extended) == {"cycle_0.json", "cycle_1.json", "cycle_2.json"}
    assert all(extended[k] == v for k, v in first.items())


def test_resume_refuses_other_settings(tmp_path, caplog):
    run_in_process(run_baseline, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(run_cycles, tmp_path, ["sae.l1_coefficient=0.5"])
    assert exit_info.value.code == 2
    assert "sae.l1_coefficient: 0.01 -> 0.5" in caplog.text
    assert snapshot(tmp_path) == before


def test_real_kill_then_resume(tmp_path):
    """SIGKILL a real process once SAE 0 exists, rerun the same command, compare with an uninterrupted run."""
    overrides = [*TINY, "cycle.max_cycles=2", "cycle.epochs=6"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    command = [sys.executable, str(PROJECT_ROOT / "scripts" / "train_cycle.py"), *overrides]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, f"run_dir={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "sae_cycle_0" / "weights.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results" / "cycle_2.json").exists(), "the kill came too late to test anything"

    subprocess.run([*command, f"run_dir={killed}"], env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run([*command, f"run_dir={whole}"], env=env, check=True, capture_output=True)
    assert final_metrics(killed) == final_metrics(whole)
    assert not list(killed.rglob("*.tmp"))
