"""Shared fixtures: the real Hydra config, composed and shrunk to seconds-long CPU runs with wandb off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# Tiny settings: every stage runs, in about a second each.
TINY = [
    "experiment=smoke",
    "dataset.max_train_examples=400",
    "model.hidden_sizes=[32,16]",
    "model.epochs=4",
    "model.lr=0.01",
    "sae.epochs=2",
    "sae.batch_size=128",
    "cycle.epochs=1",
    "wandb.mode=disabled",
    "progress=false",
    "device=cpu",
    "plots=false",  # drawn and checked once, in test_end_to_end
]


def compose_cfg(run_dir: Path, overrides: list[str] = ()):
    """The composed config exactly as the scripts see it, with this test's folder as the run folder."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[*TINY, f"run_dir={run_dir}", f"paths.output_dir={run_dir}", *overrides],
        )


def run_script(script: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of scripts/*.py in a fresh interpreter, as a user would."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def shared_mnist() -> Path:
    path = SHARED_DATA / "mnist"
    if not path.is_dir():
        pytest.skip("needs ../shared/data/mnist (real MNIST t10k split) beside the project")
    return path
