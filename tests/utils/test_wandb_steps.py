"""The wandb step ledger: a run's segments log disjoint, increasing steps, whatever moment a segment was killed at."""

from __future__ import annotations

import json
import os

import pytest

from sae_ception.errors import ArtifactError
from sae_ception.config import WandbConfig
from sae_ception.utils.tracking import Tracker
from sae_ception.utils.wandb_steps import (LEDGER_FILE, RESERVE_BLOCK, StepLedger, read_ledger, read_run_id,
                                           segment_files)
from tests.fake_wandb import wandb_calls


def test_a_new_ledger_counts_from_zero_and_reserves_before_each_block(tmp_path):
    path = tmp_path / LEDGER_FILE
    ledger = StepLedger.open(path, "abc", mode="offline")
    handed = []
    for _ in range(2 * RESERVE_BLOCK + 3):
        handed.append(ledger.next())
        on_disk = json.loads(path.read_text())
        assert on_disk["reserved"] > handed[-1], "a step was handed out before the ledger on disk reserved it"
    assert handed == list(range(2 * RESERVE_BLOCK + 3))
    assert json.loads(path.read_text())["reserved"] == 3 * RESERVE_BLOCK
    assert [s["first_step"] for s in json.loads(path.read_text())["segments"]] == [0]


def test_a_resumed_segment_starts_at_the_reservation_of_the_killed_one(tmp_path):
    path = tmp_path / LEDGER_FILE
    first = StepLedger.open(path, "abc", mode="offline")
    logged_first = [first.next() for _ in range(7)]  # killed here: no goodbye, only what is on disk
    second = StepLedger.open(path, "abc", mode="offline")
    logged_second = [second.next() for _ in range(3)]
    assert logged_first == list(range(7))
    assert logged_second == [RESERVE_BLOCK, RESERVE_BLOCK + 1, RESERVE_BLOCK + 2]
    assert [s["first_step"] for s in read_ledger(path, "abc")["segments"]] == [0, RESERVE_BLOCK]


def test_a_floor_above_the_reservation_wins(tmp_path):
    """Online, wandb's own next step (the server's) can lie beyond the ledger: the segment starts there."""
    path = tmp_path / LEDGER_FILE
    StepLedger.open(path, "abc", mode="offline").next()
    resumed = StepLedger.open(path, "abc", mode="online", floor=5 * RESERVE_BLOCK + 17)
    assert resumed.next() == 5 * RESERVE_BLOCK + 17
    below = StepLedger.open(path, "abc", mode="online", floor=3)
    assert below.next() == 6 * RESERVE_BLOCK + 17


@pytest.mark.parametrize("content, says", [
    ("{not json", "not readable as JSON"),
    ('{"run_id": "abc", "reserved": -1, "segments": []}', "not a wandb step ledger"),
    ('{"run_id": "abc", "reserved": true, "segments": []}', "not a wandb step ledger"),
    ('{"run_id": "abc", "reserved": 10, "segments": [{"first_step": 11}]}', "not a wandb step ledger"),
    ('{"run_id": "abc", "reserved": 10, "segments": {}}', "not a wandb step ledger"),
    ('[1, 2]', "not a wandb step ledger"),
    ('{"run_id": "xyz", "reserved": 10, "segments": []}', "records wandb run 'xyz'"),
])
def test_a_damaged_ledger_is_refused_and_left_as_it_was(tmp_path, content, says):
    path = tmp_path / LEDGER_FILE
    path.write_text(content)
    with pytest.raises(ArtifactError, match=says) as info:
        StepLedger.open(path, "abc", mode="offline")
    assert str(path) in str(info.value) and "wandb_run_id.txt" in str(info.value)
    assert path.read_text() == content


@pytest.mark.parametrize("content", ["", "\n", "a b", "x" * 65, "../etc", "id/with/slash"])
def test_a_damaged_run_id_is_refused(tmp_path, content):
    path = tmp_path / "wandb_run_id.txt"
    path.write_text(content)
    with pytest.raises(ArtifactError, match="is not a wandb run id"):
        read_run_id(path)


def test_a_run_id_reads_back(tmp_path):
    path = tmp_path / "wandb_run_id.txt"
    assert read_run_id(path) is None
    path.write_text("0a1b2c3d4e5f\n")
    assert read_run_id(path) == "0a1b2c3d4e5f"


@pytest.mark.parametrize("run_id", ["abc", "ab-12"])
def test_segment_files_come_in_order_of_start_time(tmp_path, run_id):
    """Folders are named by local start time to the second; segments started in the same second get -1, -2, ..."""
    names = [f"offline-run-20261130_190640-{run_id}", f"run-20261130_190500-{run_id}",
             f"offline-run-20261129_000000-{run_id}", f"offline-run-20261130_190640-{run_id}-10",
             f"offline-run-20261130_190640-{run_id}-2", f"offline-run-20261130_190640-{run_id}-1"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"run-{run_id}.wandb").write_bytes(b"")
    (tmp_path / "offline-run-20261130_190640-other").mkdir()
    (tmp_path / "offline-run-20261130_190640-other" / "run-other.wandb").write_bytes(b"")
    (tmp_path / f"offline-run-20261130_190641-{run_id}").mkdir()  # no transaction log: not a segment
    assert [f.parent.name for f in segment_files(tmp_path, run_id)] == [
        f"offline-run-20261129_000000-{run_id}", f"run-20261130_190500-{run_id}", f"offline-run-20261130_190640-{run_id}",
        f"offline-run-20261130_190640-{run_id}-1", f"offline-run-20261130_190640-{run_id}-2",
        f"offline-run-20261130_190640-{run_id}-10"]


def _tracker(run_dir, **wandb):
    run_dir.mkdir(parents=True, exist_ok=True)
    return Tracker(WandbConfig(mode=wandb.pop("mode", "offline"), **wandb), run_dir, config={"seed": 0})


def test_every_row_the_tracker_logs_has_its_own_step_across_segments(tmp_path, fake_wandb):
    run_dir = tmp_path / "run"
    first = _tracker(run_dir)
    for step in range(5):
        first.log_step("sae", {"loss": 1.0}, step)
    first.log_cycle(0, {"accuracy": 0.5})  # then killed: finish() never ran
    second = _tracker(run_dir)
    for step in range(3, 5):  # the killed stage runs again
        second.log_step("sae", {"loss": 1.0}, step)
    second.finish()
    inits = wandb_calls(fake_wandb, "init")
    assert [i["kwargs"]["id"] for i in inits] == [inits[0]["kwargs"]["id"]] * 2
    steps = [call["step"] for call in wandb_calls(fake_wandb, "log")]
    assert steps == [0, 1, 2, 3, 4, 5, 6, RESERVE_BLOCK, RESERVE_BLOCK + 1, RESERVE_BLOCK + 2]
    segments = [call["data"]["run/segment"] for call in wandb_calls(fake_wandb, "log") if "run/segment" in call["data"]]
    assert segments == [1, 2]


def test_an_online_resume_starts_at_the_servers_next_step(tmp_path, fake_wandb, monkeypatch):
    run_dir = tmp_path / "run"
    _tracker(run_dir).log_step("sae", {"loss": 1.0}, 0)
    monkeypatch.setenv("FAKE_WANDB_STEP", str(7 * RESERVE_BLOCK))  # the server has seen more (e.g. another machine)
    _tracker(run_dir, mode="online").log_step("sae", {"loss": 1.0}, 1)
    assert [call["step"] for call in wandb_calls(fake_wandb, "log")][-2:] == [7 * RESERVE_BLOCK, 7 * RESERVE_BLOCK + 1]


def test_a_disabled_tracker_writes_no_ledger(tmp_path):
    tracker = _tracker(tmp_path / "run", mode="disabled")
    tracker.log_step("sae", {"loss": 1.0}, 0)
    assert not (tmp_path / "run" / LEDGER_FILE).exists()
    assert not os.listdir(tmp_path / "run")
