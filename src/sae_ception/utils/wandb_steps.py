"""wandb steps across a resumed run's segments: every step logged once, the segments' steps disjoint and increasing.

A run killed and resumed logs to the same wandb run id from two processes: two *segments*. Offline (the default)
each segment is its own folder, `wandb/offline-run-<time>-<id>`, and wandb numbers history rows from 0 in each
one, since an offline run cannot ask a server where the run stands (wandb/wandb #2423, #4624); uploading both then
makes the second segment's rows land on the first one's steps (#3841, #5865). So the product gives every
`run.log` an explicit step from a `StepLedger`, kept in the run folder:

- a segment starts at the ledger's `reserved` step (0 for a new run), or later: at `run.step` when wandb knows
  more (an online resume), or after the last step of segments logged before the ledger existed (read with wandb's
  own reader, `history_steps`);
- steps are reserved RESERVE_BLOCK at a time, and a reservation is written (atomically) *before* any step in it
  is logged; a segment killed at any moment, with whatever wandb had flushed, never logged a step at or above
  `reserved`. Its successor starts there: a gap of at most RESERVE_BLOCK steps marks each resume.

`wandb sync <run>/wandb/offline-run-*/run-<id>.wandb` (wandb >= 0.31) uploads a run's segments in order of start time,
each one resuming the run (the `resume` intent each segment's run record carries); with disjoint steps no row
replaces another. README "Uploading offline wandb runs" says how to check and upload.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sae_ception.errors import ArtifactError
from sae_ception.utils.io import write_json

log = logging.getLogger(__name__)

LEDGER_FILE = "wandb_steps.json"
RUN_ID_FILE = "wandb_run_id.txt"
RESERVE_BLOCK = 1000  # steps reserved per ledger write (one small atomic write per this many logged rows)
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the product writes (12 hex digits) and wandb accepts in an id
READER_TIMEOUT_S = 300
MAX_STEP = 2**53  # wandb stores steps as int64 and its web UI reads them as float64: exact integers up to here


@dataclass
class StepLedger:
    """The run's wandb steps: `next()` hands out the steps of this segment, reserving them in the ledger file
    (`path`, JSON `{"run_id", "reserved", "segments": [{"first_step", "started", "mode"}, ...]}`) before use.

    `load` reads (and checks) the ledger without writing; `start_segment` starts this process's segment;
    `segments` lists every segment so far, this one last once started."""

    path: Path
    run_id: str
    reserved: int = 0
    segments: list[dict] = field(default_factory=list)
    step: int = 0  # the next step this segment logs

    @classmethod
    def load(cls, path: Path, run_id: str) -> "StepLedger":
        """The ledger at `path` (empty when there is none). Raises ArtifactError when the file is malformed or
        belongs to another run id."""
        if not path.exists():
            return cls(path, run_id)
        previous = read_ledger(path, run_id)
        return cls(path, run_id, reserved=previous["reserved"], segments=previous["segments"])

    @classmethod
    def open(cls, path: Path, run_id: str, mode: str, floor: int = 0) -> "StepLedger":
        """`load` then `start_segment`."""
        ledger = cls.load(path, run_id)
        ledger.start_segment(mode, floor)
        return ledger

    def start_segment(self, mode: str, floor: int = 0) -> None:
        """Begin a segment at max(`reserved`, `floor`) and reserve its first block (written before this returns)."""
        first = max(self.reserved, floor)
        self.segments = self.segments + [{"first_step": first, "mode": mode,
                                          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}]
        self.step = first
        self._reserve()

    def next(self) -> int:
        """The step of this segment's next logged row (written into the ledger's reservation first)."""
        if self.step >= self.reserved:
            self._reserve()
        step, self.step = self.step, self.step + 1
        return step

    def _reserve(self) -> None:
        reserved = self.step + RESERVE_BLOCK
        write_json(self.path, {"run_id": self.run_id, "reserved": reserved, "segments": self.segments})
        self.reserved = reserved


def read_ledger(path: Path, run_id: str) -> dict:
    """The ledger at `path` as {"reserved": int, "segments": list}; ArtifactError naming the file when it is not
    a ledger of run `run_id`."""
    remedy = (f"it records the wandb steps of run {run_id}'s earlier segments; restore it, or delete it and "
              f"{path.parent / RUN_ID_FILE} so that this run logs to a new wandb run")
    if not path.is_file():
        raise ArtifactError(f"{path}: not a regular file; {remedy}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise ArtifactError(f"{path}: not readable as JSON ({ex}); {remedy}") from None
    reserved, segments = (data.get("reserved"), data.get("segments")) if isinstance(data, dict) else (None, None)
    valid = (isinstance(reserved, int) and not isinstance(reserved, bool) and 0 <= reserved <= MAX_STEP - RESERVE_BLOCK
             and isinstance(segments, list)
             and all(isinstance(s, dict) and isinstance(s.get("first_step"), int) and 0 <= s["first_step"] <= reserved
                     for s in segments))
    if not valid:
        raise ArtifactError(f"{path}: not a wandb step ledger (want reserved: an int in [0, 2^53 - {RESERVE_BLOCK}] "
                            f"and segments: a list of {{first_step <= reserved, ...}}); {remedy}")
    if data.get("run_id") != run_id:
        raise ArtifactError(f"{path}: records wandb run {data.get('run_id')!r}, but wandb_run_id.txt says {run_id!r}; "
                            f"{remedy}")
    return {"reserved": reserved, "segments": segments}


def read_run_id(path: Path) -> Optional[str]:
    """The wandb run id recorded in `path` (None when absent); ArtifactError when it is not a run id."""
    if not path.exists():
        return None
    remedy = "restore it, or delete it so that this run logs to a new wandb run"
    try:
        run_id = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as ex:  # a folder, no permission, ...
        raise ArtifactError(f"{path}: not readable ({ex.strerror or ex}); {remedy}") from None
    if not RUN_ID.fullmatch(run_id):
        raise ArtifactError(f"{path}: {run_id[:80]!r} is not a wandb run id (1-64 letters, digits, '_' or '-'); "
                            f"{remedy}")
    return run_id


SEGMENT_FOLDER = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(.+)")  # [offline-]run-<time>-<id>[-<n>]


def segment_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The transaction logs (`run-<id>.wandb`) of run `run_id`'s segments under `wandb_dir`, offline and online, in
    order of their folders' names: `[offline-]run-<YYYYMMDD_HHMMSS>-<id>`, local start time to the second, then
    `-1`, `-2`, ... after the id for segments that started in the same second (wandb's `x_sync_dir_suffix`)."""
    def order(wandb_file: Path) -> tuple[str, int]:
        match = SEGMENT_FOLDER.fullmatch(wandb_file.parent.name)
        if match is None:
            return wandb_file.parent.name, 0
        suffix = match.group(2)[len(run_id) + 1:] if match.group(2).startswith(run_id + "-") else ""
        return match.group(1), int(suffix) if suffix.isdigit() else 0

    return sorted((f for f in wandb_dir.glob(f"*run-*/run-{run_id}.wandb") if f.is_file()), key=order)


def history_steps(wandb_file: Path) -> list[int]:
    """The `_step` of every history row in one `.wandb` transaction log, in file order, read with wandb's own
    reader (`wandb leet inspect --json`, wandb >= 0.31). A log whose writer was killed is read up to its last
    whole record. Raises RuntimeError when the reader fails."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                            capture_output=True, text=True, timeout=READER_TIMEOUT_S)
    steps = []
    for line in result.stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("type") == "history":
            history = record.get("history") or {}
            item = history.get("item") or {}
            steps.append(int((history.get("step") or {}).get("num", item.get("_step", 0))))
    if result.returncode != 0 and not steps:
        raise RuntimeError(f"`wandb leet inspect --json {wandb_file}` failed (exit {result.returncode}): "
                           f"{result.stderr.strip()[-300:]}")
    return steps


def earlier_segments_floor(wandb_dir: Path, run_id: str) -> int:
    """One past the last step the segments of `run_id` already under `wandb_dir` logged (0 when none): the first
    step a segment may use when those were logged without a ledger (by a version before it)."""
    last = -1
    for wandb_file in segment_files(wandb_dir, run_id):
        try:
            last = max([last, *history_steps(wandb_file)])
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as ex:
            # those segments numbered their rows 0, 1, ...: fewer rows than the file has bytes, so its size is
            # past their last step
            size = wandb_file.stat().st_size if wandb_file.exists() else 0
            last = max(last, size)
            log.warning("could not read %s (%s): this segment starts after step %d, its size in bytes (more than "
                        "its rows)", wandb_file, ex, size)
    return last + 1
