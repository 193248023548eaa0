"""Wall-clock time of whole SAE-ception runs, as a user launches them.

    python benchmarks/bench_cycle.py                      # default digits run + the MNIST paper preset
    python benchmarks/bench_cycle.py --only digits --repeats 5

Each run is the real command (`python scripts/train_cycle.py ...`) in a fresh interpreter, so the time
includes start-up, data loading, every stage and the wandb offline writer. Goals on a 2-core CPU:
the default run well under a minute, the MNIST paper preset (3 cycles, shared t10k split) under three.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

RUNS = {
    "digits": ([], 60.0),
    "mnist_paper": (["experiment=mnist_paper", f"dataset.path={SHARED_MNIST}"], 180.0),
}


def time_run(name: str, overrides: list[str], out: Path, repeat: int) -> dict:
    run_dir = out / f"{name}_{repeat}"
    command = [sys.executable, str(ROOT / "scripts" / "train_cycle.py"), *overrides, f"run_dir={run_dir}", "progress=false"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    last = max(run_dir.glob("results/cycle_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    first = run_dir / "results" / "cycle_0.json"
    return {
        "run": name,
        "seconds": round(seconds, 1),
        "cycles": int(last.stem.split("_")[1]),
        "acc_first": json.loads(first.read_text())["metrics"]["performance"]["accuracy"],
        "acc_last": json.loads(last.read_text())["metrics"]["performance"]["accuracy"],
        "command": " ".join(["python scripts/train_cycle.py", *overrides]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median time is reported")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    if "mnist_paper" in names and not SHARED_MNIST.is_dir():
        print(f"skipping mnist_paper: {SHARED_MNIST} is absent")
        names.remove("mnist_paper")
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            runs = [time_run(name, RUNS[name][0], Path(tmp), repeat) for repeat in range(args.repeats)]
            seconds = sorted(run["seconds"] for run in runs)
            rows.append({**runs[0], "median": statistics.median(seconds), "min": seconds[0], "max": seconds[-1]})
    print(f"{'run':<12} {'median s':>8} {'min s':>6} {'max s':>6} {'goal s':>6} {'cycles':>6} {'acc c0':>7} {'acc last':>8}  command")
    for row in rows:
        print(f"{row['run']:<12} {row['median']:>8.1f} {row['min']:>6.1f} {row['max']:>6.1f} {RUNS[row['run']][1]:>6.0f} "
              f"{row['cycles']:>6} {row['acc_first']:>7.4f} {row['acc_last']:>8.4f}  {row['command']}")


if __name__ == "__main__":
    main()
