"""Day-one friction: Hydra's own errors as the product's one line, rejected commands that write nothing,
progress that does not flood a redirected log, and threads that do not oversubscribe the CPUs."""

import io
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sae_ception.cli import hydra_error_line
from sae_ception.utils.device import set_threads, usable_cpus
from sae_ception.utils.progress import LogProgress, progress_bar
from tests.conftest import CONFIG_DIR, TINY, run_script

pytestmark = pytest.mark.slow


def hydra_error(overrides: list[str]) -> BaseException:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose("config", overrides=overrides)
    return info.value


@pytest.mark.parametrize("override,expected", [
    ("sae.lrr=1", "sae.lrr is not a setting; did you mean sae.lr?"),
    ("sae.l1_coeficient=1", "sae.l1_coeficient is not a setting; did you mean sae.l1_coefficient?"),
    ("seeed=1", "seeed is not a setting; did you mean seed?"),
    ("cycle.max_cycle=2", "cycle.max_cycle is not a setting; did you mean cycle.max_cycles?"),
    ("wandb.mod=online", "wandb.mod is not a setting; did you mean wandb.mode?"),
    ("sae=topkk", "sae=topkk is not an option; did you mean topk? (valid: batchtopk, concept_autoencoder, jumprelu, paper_relu, relu, topk)"),
    ("experiment=smok", "experiment=smok is not an option; did you mean smoke?"),
    ("dataset=mnsit", "dataset=mnsit is not an option; did you mean mnist?"),
    ("sae.k=[", "cannot read the override 'sae.k=['"),
    ("hydra.sweep.dirr=x", "hydra.sweep.dirr is not a setting; did you mean hydra.sweep.dir?"),
])
def test_hydra_errors_become_one_line_with_the_closest_valid_key(override, expected):
    line = hydra_error_line(hydra_error(["experiment=smoke", override]))
    assert line is not None and "\n" not in line
    assert line.startswith(expected), line


def test_real_cli_misspelt_key_is_one_line_exit_2_and_writes_nothing(tmp_path):
    for flags, args in (([], ["sae.lrr=1"]), (["--multirun"], ["seed=0,1", "cycle.max_cycle=1"]),
                        (["--multirun"], ["sae.lrr=1,2"])):  # swept: Hydra composes each job, after claiming the sweep
        proc = run_script("train_cycle.py", *flags, *TINY, f"run_dir={tmp_path / 'run'}", *args, cwd=tmp_path)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == 2, lines
        assert len(lines) == 1 and "ERROR" in lines[0] and "did you mean" in lines[0], lines
        assert list(tmp_path.iterdir()) == [], "a rejected command must create nothing"


def test_a_bad_value_creates_no_run_folder_and_no_log(tmp_path):
    proc = run_script("train_cycle.py", *TINY, f"run_dir={tmp_path / 'run'}", "sae.lr=-1")
    assert proc.returncode == 2 and "sae.lr=-1" in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def test_evaluate_on_a_missing_folder_creates_nothing(tmp_path):
    proc = run_script("evaluate.py", f"run_dir={tmp_path / 'nonexistent'}", "wandb.mode=disabled")
    assert proc.returncode == 2
    assert not (tmp_path / "nonexistent").exists()


def test_progress_in_a_redirected_log_is_plain_lines(tmp_path):
    """stdout/stderr are pipes here, as when a user redirects a run into a file: no carriage-return bars."""
    run_dir = tmp_path / "run"
    proc = run_script("train_cycle.py", *TINY, "cycle.max_cycles=1", "progress=true", f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in (proc.stdout, proc.stderr, (run_dir / "train_cycle.log").read_text()):
        assert "\r" not in text and "it/s" not in text


def test_log_progress_writes_a_line_per_interval(caplog):
    caplog.set_level(logging.INFO)
    bar = progress_bar(10, "sae", enabled=True, stream=io.StringIO(), interval=0.0)
    assert isinstance(bar, LogProgress)
    bar.set_postfix(mse="0.1")
    for _ in range(10):
        bar.update()
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "sae_ception.progress"]
    assert lines[0].startswith("sae: 1/10 steps (10%)") and "mse=0.1" in lines[0]
    assert len(lines) == 9  # none for the last step: the stage's own log line follows


def test_progress_is_a_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    stream = Terminal()
    bar = progress_bar(5, "baseline", enabled=True, stream=stream, unit="epochs")
    assert isinstance(bar, tqdm)
    bar.update()
    bar.close()
    assert "\r" in stream.getvalue() and "baseline" in stream.getvalue()  # a bar, redrawn in place
    assert not isinstance(progress_bar(5, "x", enabled=True, stream=io.StringIO()), tqdm)
    assert not isinstance(progress_bar(5, "x", enabled=False, stream=stream), (tqdm, LogProgress)) or \
        type(progress_bar(5, "x", enabled=False, stream=stream)).__name__ == "NoProgress"


def test_threads_auto_shares_the_cpus_among_local_processes(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_threads("auto") == usable_cpus()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * usable_cpus()))
        assert set_threads("auto") == 1 and torch.get_num_threads() == 1  # never 0
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_threads("auto") == 3  # the user's own setting wins over auto
        assert set_threads("2") == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
