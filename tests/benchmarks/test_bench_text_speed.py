"""benchmarks/bench_text_speed.py end to end on a tiny setting: both comparisons run and the JSON holds their ratios."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_text_speed.py"


def test_tiny_run_writes_positive_finite_ratios(tmp_path, minilm, shared_sst2):
    out = tmp_path / "speed.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(shared_sst2), "--train", "48", "--val", "16", "--dev", "16",
         "--epochs", "1", "--batch-size", "16", "--max-length", "16", "--eval-batch-size", "32", "--seeds", "1",
         "--repeats", "1", "--threads", "1", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    ratios = [data["fine_tuning"]["ratio"], data["fine_tuning"]["ratio_cpu"], *data["fine_tuning"]["paired_ratios"],
              data["extraction"]["ratio_pooled"], data["extraction"]["ratio_tokens"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios), ratios
    assert {r["side"] for r in data["fine_tuning"]["runs"]} == {"product", "trainer"}
    assert all(0 <= r["dev_accuracy"] <= 1 for r in data["fine_tuning"]["runs"])
    assert data["settings"]["sizes"] == {"train": 48, "val": 16, "test": 16}
    assert data["extraction"]["sentences"] == 48
    for line in ("throughput ratio product/Trainer:", "ratio product/bare: pooled"):
        assert line in done.stdout
