"""benchmarks/device_check.sh: one line and exit 0 without a GPU; its steps and figures file, run on the CPU."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def run_script(out: Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(out), **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the script would run for real")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "device_check: no CUDA device visible (torch.cuda.is_available() is false); nothing to check here"]
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_every_figure(tmp_path):
    """The same steps at toy sizes on the CPU: the run's per-cycle table, its stage times and the
    throughput table with SAELens's rows reach the figures file, with the date and the device. A relative OUT
    is read from the folder the script is called from."""
    done = run_script(Path("figures"), cwd=tmp_path, DEVICE_CHECK_DRY_RUN="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "figures" / "device_check.md").read_text()
    assert report.startswith("# Device check, 20")
    assert "Device: CPU (dry run)" in report
    assert "## default run, mixed_precision=no (" in report and "exit 0)" in report
    for cycle in (0, 1, 2):  # experiment=smoke: 2 cycles after the baseline
        assert f"\n| {cycle} | 0." in report
    assert "Stage seconds: baseline 0:" in report
    assert "MiniLM-L6 on SST-2: skipped (dry run)" in report
    for sae, trainer in (("relu", "sae-ception"), ("relu", "SAELens"), ("topk", "sae-ception"), ("topk", "SAELens")):
        assert re.search(rf"\n{sae} +{trainer} ", report), (sae, trainer)  # a row of the throughput table
    assert f"figures written to {tmp_path / 'figures' / 'device_check.md'}" in done.stdout
