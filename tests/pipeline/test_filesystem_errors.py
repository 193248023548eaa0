"""A full disk or a read-only run folder: one line naming the file and the cause (exit 2), nothing half-written,
and the same command resumes once there is room again."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from sae_ception.stages.cycle import run_cycles
from tests.conftest import TINY, run_script
from tests.pipeline.helpers import final_metrics, run_in_process

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size, mounted under tmp_path (needs the right to mount: root, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def mount_with(options: str) -> Path:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"needs the right to mount a tmpfs (root), to make a real full or read-only disk: {proc.stderr.strip()}")
        return mount

    yield mount_with
    subprocess.run(["umount", str(mount)], capture_output=True)


def one_error_line(proc) -> str:
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, errors
    return errors[0]


def test_a_full_disk_is_one_line_and_the_run_resumes_when_there_is_room(small_disk, tmp_path):
    disk = small_disk("size=160k")
    run_dir = disk / "run"
    args = [*TINY, "cycle.max_cycles=1", f"run_dir={run_dir}"]
    proc = run_script("train_cycle.py", *args)
    line = one_error_line(proc)
    assert "the disk is full" in line and str(run_dir) in line, line
    assert not list(run_dir.rglob("*.tmp")), "a failed write must not leave temporaries"
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    resumed = run_script("train_cycle.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = tmp_path / "whole"
    run_in_process(run_cycles, whole, ["cycle.max_cycles=1"])
    assert final_metrics(run_dir) == final_metrics(whole)


def test_a_read_only_run_folder_is_one_line(small_disk):
    disk = small_disk("size=20m")
    run_dir = disk / "run"
    run_in_process(run_cycles, run_dir, ["cycle.max_cycles=0"])
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    for script, extra in (("train_cycle.py", [*TINY, "cycle.max_cycles=1"]), ("evaluate.py", ["wandb.mode=disabled"])):
        line = one_error_line(run_script(script, *extra, f"run_dir={run_dir}"))
        assert "read-only" in line and str(run_dir) in line, line


def test_a_new_run_dir_in_a_read_only_place_is_one_line(small_disk):
    disk = small_disk("size=1m,ro")
    line = one_error_line(run_script("train_cycle.py", *TINY, f"run_dir={disk / 'new' / 'run'}"))
    assert "read-only" in line and "run_dir=" in line, line


def test_any_failed_write_names_its_file(caplog, tmp_path, monkeypatch):
    """Without a mount: the write of the first SAE checkpoint fails as on a full disk."""
    import sae_ception.utils.io as io

    real = io.save_file

    def full_disk(tensors, filename, metadata=None):
        if "sae_cycle_0" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(io, "save_file", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(run_cycles, tmp_path / "run", ["cycle.max_cycles=0"])
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "the disk is full" in errors[0]
    assert str(tmp_path / "run" / "checkpoints" / "sae_cycle_0") in errors[0], errors
    assert not (tmp_path / "run" / "checkpoints" / "sae_cycle_0").exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_a_sweep_in_a_read_only_place_is_one_line(small_disk):
    disk = small_disk("size=1m,ro")
    for where in ([], [f"hydra.sweep.dir={disk / 'sweep'}"]):  # under the working folder, or named
        line = one_error_line(run_script("train_cycle.py", "--multirun", *TINY, "seed=0,1", *where, cwd=disk))
        assert "read-only" in line, line
