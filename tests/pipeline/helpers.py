"""Run pipeline tasks in-process on the real composed config (faster than a subprocess per run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sae_ception.cli import run_task
from tests.conftest import TINY, compose_cfg


def run_in_process(task, run_dir: Path, overrides: list[str] = (), preflight=None, base: list[str] = TINY,
                   from_run_folder: bool = False):
    return run_task(compose_cfg(run_dir, list(overrides), base), task, preflight, from_run_folder=from_run_folder)


def expect_one_line_error(caplog, run_dir: Path, overrides, match: str, task=None, preflight=None, base: list[str] = TINY,
                          from_run_folder: bool = False):
    """The run stops with exit code 2 and exactly one one-line error containing `match`, touching no file."""
    import pytest

    from sae_ception.stages.cycle import run_cycles

    before = snapshot(run_dir) if run_dir.exists() else {}
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task or run_cycles, run_dir, overrides, preflight, base=base, from_run_folder=from_run_folder)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert match in errors[0], errors[0]
    assert (snapshot(run_dir) if run_dir.exists() else {}) == before, "a rejected run must not change files"
    return errors[0]


def final_metrics(run_dir: Path) -> dict:
    return {p.name: json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "results").glob("cycle_*.json"))}


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file except logs (which a rerun appends to) and timings (of the latest invocation)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".log" and p.name != "timings.json"
    }
