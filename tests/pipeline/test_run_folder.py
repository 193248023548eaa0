"""A run folder has one owner: unnamed runs and sweeps get new folders, and a live process's lock is respected."""

import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sae_ception.errors import ConfigError
from sae_ception.run_folder import RunFolderLock, claim_new_folder
from tests.conftest import PROJECT_ROOT, TINY, run_script

pytestmark = pytest.mark.slow


def test_claim_takes_the_next_free_name(tmp_path):
    (tmp_path / "12-00-00").mkdir()
    (tmp_path / "12-00-00-1").mkdir()
    assert claim_new_folder(tmp_path / "12-00-00") == tmp_path / "12-00-00-2"
    assert claim_new_folder(tmp_path / "12-00-01") == tmp_path / "12-00-01"


def test_racing_claims_of_one_name_get_different_folders(tmp_path):
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(claim_new_folder(tmp_path / "same-second"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8


def test_a_held_lock_refuses_a_second_owner_in_one_line(tmp_path):
    first = RunFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError, match=r"run_dir=.* is in use by another running process \(pid \d+ on ") as info:
        RunFolderLock(tmp_path).acquire()
    assert "\n" not in str(info.value)
    first.release()
    second = RunFolderLock(tmp_path)
    second.acquire()  # released: free again
    second.release()


def _seconds_ahead(root, pattern: str, seconds: int = 150) -> list:
    """Pre-create the timestamped folders Hydra's default would pick in the next minutes, each with a marker."""
    now = datetime.datetime.now()
    made = []
    for offset in range(-2, seconds):
        folder = root / (now + datetime.timedelta(seconds=offset)).strftime(pattern)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "someone_elses.txt").write_text("mine")
        made.append(folder)
    return made


def _untouched(folders) -> bool:
    return all(sorted(p.name for p in f.iterdir()) == ["someone_elses.txt"] for f in folders)


def test_a_sweep_without_a_folder_never_reuses_an_existing_one(tmp_path):
    """As if another sweep had started in the same second: the new sweep claims `<time>-1`."""
    taken = _seconds_ahead(tmp_path / "multirun", "%Y-%m-%d/%H-%M-%S")
    proc = run_script("train_cycle.py", "--multirun", *TINY, "cycle.max_cycles=0", "seed=0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _untouched(taken), "the sweep wrote into a folder it did not create"
    configs = sorted((tmp_path / "multirun").glob("*/*/*/config.yaml"))
    assert len(configs) == 2 and all(c.parent.parent.name.endswith("-1") for c in configs), configs


def test_a_run_without_run_dir_never_reuses_an_existing_folder(tmp_path):
    taken = _seconds_ahead(tmp_path / "outputs", "%Y-%m-%d/%H-%M-%S")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "train_cycle.py"), *TINY, "cycle.max_cycles=0"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _untouched(taken)
    configs = list((tmp_path / "outputs").glob("*/*/config.yaml"))
    assert len(configs) == 1 and configs[0].parent.name.endswith("-1")


def test_a_second_live_run_on_one_run_dir_is_refused(tmp_path):
    """(A lock left by a killed run does not block its resume: test_resume.py's real SIGKILL test resumes one.)"""
    run_dir = tmp_path / "shared"
    command = [sys.executable, str(PROJECT_ROOT / "scripts" / "train_cycle.py"), *TINY, "cycle.max_cycles=1",
               "cycle.epochs=100000", f"run_dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.Popen([*command, "seed=0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (run_dir / "config.yaml").exists()
        for seed in ("0", "1"):  # same settings or others: a live owner comes first either way
            second = subprocess.run([*command, f"seed={seed}"], env=env, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
            errors = [line for line in (second.stdout + second.stderr).splitlines() if "ERROR" in line]
            assert len(errors) == 1 and "is in use by another running process" in errors[0], errors
            assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run must still be running (else the test proves nothing)"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
