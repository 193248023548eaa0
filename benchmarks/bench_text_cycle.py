"""One full SAE-ception cycle on text with a real pretrained transformer: MiniLM-L6 on SST-2.

    python benchmarks/bench_text_cycle.py                       # 4,000 training sentences, the 872 dev sentences
    python benchmarks/bench_text_cycle.py --train 1000 --data ../shared/data/sst2

Runs the real command (`scripts/train_cycle.py experiment=sst2_minilm ...`) in a fresh interpreter and
reports the time of each stage (from the run's results/timings.json), the peak resident memory of the
process, and the dev accuracy of the baseline (cycle 0) and of the cycle-1 model.
Goals on a 2-core CPU: under 10 minutes in all, baseline dev accuracy above 80%.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"), help="folder with train.tsv + dev.tsv")
    parser.add_argument("--train", type=int, default=4000, help="training sentences (a stratified, seeded subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    if not (Path(args.data) / "train.tsv").is_file():
        sys.exit(f"no train.tsv in {args.data}; pass --data /folder/with/sst2")
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, str(ROOT / "scripts" / "train_cycle.py"), "experiment=sst2_minilm",
            f"dataset.path={args.data}", f"dataset.max_train_examples={args.train}", f"seed={args.seed}",
            f"run_dir={run_dir}", "wandb.mode=disabled", "progress=false", *args.overrides,
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        total = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        timings = json.loads((Path(run_dir) / "results" / "timings.json").read_text())
        results = {c: json.loads((Path(run_dir) / "results" / f"cycle_{c}.json").read_text()) for c in (0, 1)}
    print(f"MiniLM-L6 on SST-2: {args.train} training sentences, {results[0]['num_examples']} dev sentences, "
          f"seed {args.seed}")
    print(f"  {'stage':<22} seconds")
    for row in timings:
        print(f"  {row['stage'] + ' (cycle ' + str(row['cycle']) + ')':<22} {row['seconds']:7.1f}")
    print(f"  {'whole command':<22} {total:7.1f}   (goal: under 600 s)")
    print(f"  peak resident memory   {peak_gib:.2f} GiB")
    for cycle, label in ((0, "baseline (cycle 0)"), (1, "cycle 1")):
        perf = results[cycle]["metrics"]["performance"]
        print(f"  dev accuracy, {label:<18} {perf['accuracy']:.4f}   (spliced SAE: {perf['spliced_accuracy']:.4f})")
    print("  goal: baseline dev accuracy above 0.80")


if __name__ == "__main__":
    main()
