"""A run killed with wandb offline and resumed: wandb's own files hold every row of both segments, each at its own
step, read back with wandb's own reader (`wandb leet inspect --json`) and listed by a dry `wandb sync`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sae_ception.config import WandbConfig
from sae_ception.utils.tracking import Tracker
from sae_ception.utils.wandb_steps import LEDGER_FILE, history_steps, read_ledger, segment_files
from tests.conftest import PROJECT_ROOT, TINY, wandb_env

pytestmark = pytest.mark.slow

WANDB_OWN = {"_step", "_runtime", "_timestamp"}


def records(wandb_file: Path) -> list[dict]:
    """Every record of a .wandb transaction log, as wandb's own reader prints it."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                         capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def rows(wandb_file: Path) -> list[dict]:
    return [r["history"]["item"] for r in records(wandb_file) if r.get("type") == "history"]


def row_key(item: dict) -> tuple:
    """What a row is, apart from wandb's step and clock: its metric names and its own x value (stage step or
    cycle); tables and images are compared by name."""
    names = tuple(sorted(k for k in item if k not in WANDB_OWN and not k.startswith("run/")))
    x = tuple(sorted((k, item[k]) for k in item if k.endswith("/step") or k == "cycle"))
    return names, x


def train_command(*extra: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "scripts" / "train_cycle.py"), *TINY, "cycle.max_cycles=1",
            "cycle.epochs=400", "wandb.mode=offline", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    """The rows an uninterrupted run logs (the same command as the killed ones, never stopped)."""
    tmp = tmp_path_factory.mktemp("whole")
    subprocess.run([*train_command(), f"run_dir={tmp / 'run'}"], env=wandb_env(tmp), check=True,
                   capture_output=True, timeout=600)
    (whole_file,) = segment_files(tmp / "run" / "wandb", (tmp / "run" / "wandb_run_id.txt").read_text().strip())
    return rows(whole_file)


def stop_after_first_sae(tmp_path: Path, sig: int, wait_s: float, *extra: str) -> tuple[Path, int]:
    """Start the run, send `sig` `wait_s` seconds after SAE 0 is saved, then rerun the same command to the end.
    Returns (run folder, the stopped process's exit code)."""
    env, run_dir = wandb_env(tmp_path), tmp_path / "run"
    command = [*train_command(*extra), f"run_dir={run_dir}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (run_dir / "checkpoints" / "sae_cycle_0" / "weights.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(wait_s)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert not (run_dir / "results" / "cycle_1.json").exists(), "the stop came too late to test anything"
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return run_dir, code


def check_segments(run_dir: Path, whole_rows: list[dict]) -> list[Path]:
    """Two segments of one run id, both asking to resume; every row of the uninterrupted run in one of them; each
    step once, the second segment's above the first's; the ledger agrees; README's dry sync lists both."""
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    first, second = files = segment_files(run_dir / "wandb", run_id)
    assert [f.parent.name.startswith("offline-run-") for f in files] == [True, True]
    run_records = [next(r["run"] for r in records(f) if r.get("type") == "run") for f in files]
    assert [r["run_id"] for r in run_records] == [run_id, run_id]
    assert all(r.get("resume") for r in run_records), "a segment that does not ask to resume replaces the run on sync"

    steps = [history_steps(f) for f in files]
    assert steps[0] and steps[1]
    assert all(s == sorted(s) for s in steps)
    union = steps[0] + steps[1]
    assert len(union) == len(set(union)), "a step was logged twice"
    assert max(steps[0]) < min(steps[1])
    ledger = read_ledger(run_dir / LEDGER_FILE, run_id)
    assert [s["first_step"] for s in ledger["segments"]] == [steps[0][0], steps[1][0]]
    assert ledger["reserved"] > max(union)

    # every row the uninterrupted run logged is in one of the two segments (the stopped stage's partial rows too)
    logged = {row_key(item) for f in files for item in rows(f)}
    missing = [key for key in map(row_key, whole_rows) if key not in logged]
    assert not missing, missing[:5]
    assert [item["run/segment"] for f in files for item in rows(f) if "run/segment" in item] == [1, 2]

    # README's command: `wandb sync --dry-run <run>/wandb/offline-run-*/run-$id.wandb`
    readme_paths = sorted(map(str, (run_dir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")))
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *readme_paths],
                         env=wandb_env(run_dir), capture_output=True, text=True, timeout=300)
    listed = dry.stdout + dry.stderr
    assert "Would sync 2 run(s)" in listed and first.parent.name in listed and second.parent.name in listed
    return files


def test_a_killed_offline_run_resumed_keeps_every_row_of_both_segments(tmp_path, uninterrupted):
    """SIGKILL: no goodbye. wandb wrote the rows of every `wandb.flush_seconds`; those of the finished stages are
    on disk (the kill comes 1 s after SAE 0 is saved, the rows are written every 0.1 s)."""
    run_dir, code = stop_after_first_sae(tmp_path, signal.SIGKILL, 1.0, "wandb.flush_seconds=0.1")
    assert code == -signal.SIGKILL
    check_segments(run_dir, uninterrupted)


def test_a_terminated_offline_run_finishes_wandb_and_resumes_whole(tmp_path, uninterrupted):
    """SIGTERM (preemption, `kill`, a time limit): the run stops as after Ctrl-C, finishing wandb (its exit code
    recorded), at the default flush interval, right after SAE 0 is saved."""
    run_dir, code = stop_after_first_sae(tmp_path, signal.SIGTERM, 0.0)
    assert code == 128 + signal.SIGTERM
    first, _ = check_segments(run_dir, uninterrupted)
    exits = [r["exit"] for r in records(first) if r.get("type") == "exit"]
    assert exits and exits[-1].get("exit_code") == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in (run_dir / "train_cycle.log").read_text()
    assert not list(run_dir.rglob("*.tmp"))


LEGACY_SEGMENT = """
import sys, wandb
run = wandb.init(project="p", mode="offline", id=sys.argv[2], resume="allow", dir=sys.argv[1])
for i in range(5):
    run.log({"sae/loss": float(i), "sae/step": i})  # implicit steps 0..4, as versions before the ledger logged
run.finish()
"""


def legacy_run(tmp_path: Path, run_id: str, env: dict) -> tuple[Path, Path]:
    """A run folder as versions before the ledger left it: wandb_run_id.txt and one offline segment whose rows
    are numbered 0..4, no wandb_steps.json. Returns (run folder, the segment's .wandb file)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "legacy.py").write_text(LEGACY_SEGMENT)
    subprocess.run([sys.executable, str(tmp_path / "legacy.py"), str(run_dir), run_id], env=env, check=True,
                   timeout=300)
    (run_dir / "wandb_run_id.txt").write_text(run_id + "\n")
    (segment,) = segment_files(run_dir / "wandb", run_id)
    assert history_steps(segment) == [0, 1, 2, 3, 4]
    return run_dir, segment


def test_a_segment_logged_before_the_ledger_existed_is_continued_after(tmp_path, wandb_here):
    """A run folder from an older version: wandb_run_id.txt and an offline segment numbered from 0, no ledger."""
    run_dir, _ = legacy_run(tmp_path, "legacy01", wandb_here)
    tracker = Tracker(WandbConfig(mode="offline"), run_dir, config={"seed": 0})
    tracker.log_step("sae", {"loss": 9.0}, 5)
    tracker.finish()
    old, new = segment_files(run_dir / "wandb", "legacy01")
    assert history_steps(old) == [0, 1, 2, 3, 4]
    assert history_steps(new) == [5, 6]  # the segment marker, then the row


def test_the_reader_reads_a_killed_writers_log_up_to_its_last_whole_record(tmp_path):
    _, whole = legacy_run(tmp_path, "cut01", wandb_env(tmp_path))
    cut = tmp_path / "cut" / whole.name
    cut.parent.mkdir()
    data = whole.read_bytes()
    assert history_steps(whole) == [0, 1, 2, 3, 4]
    for share in (0.3, 0.5, 0.7, 0.9):  # a prefix of the rows, whole records only, wherever the writer stopped
        cut.write_bytes(data[: int(len(data) * share)])
        steps = history_steps(cut)
        assert steps == list(range(len(steps))), (share, steps)
