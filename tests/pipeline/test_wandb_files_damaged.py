"""A resumed run's wandb files on the inputs a review broke them with: a ledger reserving steps beyond what wandb
holds, a folder where a file belongs, a segment from before the ledger that wandb's reader cannot read."""

from __future__ import annotations

import json

import pytest

from sae_ception.config import WandbConfig
from sae_ception.stages.cycle import run_cycles
from sae_ception.utils import wandb_steps
from sae_ception.utils.tracking import Tracker
from sae_ception.utils.wandb_steps import history_steps, segment_files
from tests.pipeline.helpers import expect_one_line_error, run_in_process
from tests.pipeline.test_wandb_resume import legacy_run

pytestmark = pytest.mark.slow


def test_a_ledger_reserving_steps_beyond_wandbs_int64_stops_in_one_line(caplog, tmp_path, fake_wandb):
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0"])
    (tmp_path / "wandb_run_id.txt").write_text("abc123\n")
    (tmp_path / "wandb_steps.json").write_text(json.dumps({"run_id": "abc123", "reserved": 2**63, "segments": []}))
    expect_one_line_error(caplog, tmp_path, ["cycle.max_cycles=0", "wandb.mode=offline"], "wandb_steps.json")


@pytest.mark.parametrize("folder, files", [
    ("wandb_steps.json", {"wandb_run_id.txt": "abc123\n"}),
    ("wandb_run_id.txt", {}),
])
def test_a_wandb_file_that_is_not_a_file_stops_in_one_line(caplog, tmp_path, fake_wandb, folder, files):
    run_in_process(run_cycles, tmp_path, ["cycle.max_cycles=0"])
    (tmp_path / folder).mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    expect_one_line_error(caplog, tmp_path, ["cycle.max_cycles=0", "wandb.mode=offline"], folder)


def test_a_pre_ledger_segment_the_reader_cannot_read_is_still_not_overlapped(tmp_path, monkeypatch, wandb_here):
    run_dir, old = legacy_run(tmp_path, "legacy02", wandb_here)

    monkeypatch.setattr(wandb_steps, "READER_TIMEOUT_S", 0.001)  # a reader that does not finish in time (a big log)
    tracker = Tracker(WandbConfig(mode="offline"), run_dir, config={"seed": 0})
    tracker.log_step("sae", {"loss": 9.0}, 5)
    tracker.finish()
    monkeypatch.setattr(wandb_steps, "READER_TIMEOUT_S", 300)

    old_file, new = segment_files(run_dir / "wandb", "legacy02")  # the same second: wandb names the new one `-1`
    assert old_file == old
    assert min(history_steps(new)) > 4, f"the resumed segment logged {history_steps(new)}, the old one 0..4"
