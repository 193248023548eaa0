"""Runs side by side on one machine: wall time of the default digits job alone and as two simultaneous runs.

    python benchmarks/bench_parallel_runs.py                 # 5 repeats of each setting
    python benchmarks/bench_parallel_runs.py --repeats 1 --skip-spinning

Settings (each run is `python scripts/train_cycle.py wandb.mode=disabled run_dir=<new folder>` in a fresh
interpreter):
- one run alone (threads=auto: every CPU), with the package's short OpenMP spin and with libgomp's default;
- two at once, threads=auto (each uses every CPU: the cores are oversubscribed two to one);
- two at once, threads=<CPUs / 2> (what README advises for runs started by hand side by side);
- two at once, threads=auto with OpenMP spinning as torch's runtime does by default (GOMP_SPINCOUNT=300000,
  libgomp's default), i.e. without the short spin the package sets on import (`sae_ception/__init__.py`).
For two runs the figure is the wall time until both have finished; the median over repeats is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_cycle.py"


def together(count: int, extra: list[str], env: dict[str, str], scratch: Path) -> float:
    """Seconds until `count` simultaneous runs have all finished (each must exit 0)."""
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "wandb.mode=disabled", f"run_dir={scratch / str(i)}", *extra],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(count)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a run failed: {err.decode()[-2000:]}")
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-spinning", action="store_true", help="leave out the slow default-spinning setting")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    spinning = {**base, "GOMP_SPINCOUNT": "300000"}
    settings = [("one run alone, threads=auto", 1, [], base),
                ("one run alone, threads=auto, GOMP_SPINCOUNT=300000", 1, [], spinning),
                ("two at once, threads=auto", 2, [], base),
                (f"two at once, threads={max(1, cpus // 2)}", 2, [f"threads={max(1, cpus // 2)}"], base)]
    if not args.skip_spinning:
        settings.append(("two at once, threads=auto, GOMP_SPINCOUNT=300000", 2, [], spinning))
    print(f"{cpus} CPUs; `python scripts/train_cycle.py wandb.mode=disabled` (digits, baseline + 3 cycles); "
          f"median of {args.repeats}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, count, extra, env in settings:
            times = [together(count, extra, env, Path(scratch) / f"run{r}") for r in range(args.repeats)]
            print(f"{name:<52} {statistics.median(times):7.1f} s   (runs: {' '.join(f'{t:.1f}' for t in times)})",
                  flush=True)


if __name__ == "__main__":
    main()
