"""The concept-transfer benchmark: every method on real MNIST, several seeds, beside the reference's claims, and
the reference's training-depth claim as a sweep over the epochs A and B are trained.

    python benchmarks/bench_concept_transfer.py                       # 5 seeds, mega -> mega, ../shared/data/mnist
    python benchmarks/bench_concept_transfer.py --seeds 3 --epochs 2 10 40 --out /tmp/ct

Both parts are ordinary `scripts/transfer_concept.py --multirun` sweeps (their folders can be read with
scripts/compare.py too). Part 1: the reference's "mega" MLP (784-512-256-128-64) for A and B with the preset's
schedule (model=mlp_mega: 8 epochs, the best validation epoch kept), every method, seeds 0..S-1. Part 2: the
same with A and B trained for exactly E epochs each (keep_best=false, so depth is the number of epochs; the
joint ceiling gets the same schedule), E in --epochs. Each cell is the mean over seeds with its 95% Student's t
interval (mean ± t(0.975, n-1)·sd/√n, evaluation/paired.py), shown as `mean [low, high]` clipped to the
measure's range when it crosses it (a fraction stays in [0, 1]); the depth table's last column is the paired
(by seed) change from the fewest to the most epochs, with its interval. Budgets are means over seeds, and the
transfer of each seed is listed too (a mean of 0s and 1s is no typical value).
Writes OUT/concept_transfer.md and .json; goal on this 2-core machine: the whole benchmark under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sae_ception.evaluation.paired import paired_difference  # noqa: E402

SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MEASURES = ("transfer", "preservation", "preservation_change", "specificity")
BUDGET = ("target_images", "target_labels", "other_images", "validation_images", "gradient_steps",
          "parameters_changed")

# the weight-surgery methods and their baselines (the SAE concept-space methods: benchmarks/bench_concept_space.py)
METHODS = ("none", "joint", "copy_head", "procrustes_probe", "procrustes_probe_tuned", "activation_transplant",
           "cascade", "cascade_isolated", "finetune_head", "finetune_replay")

# What ../shared/reference/concept-injection-framework.md ("Results Summary", "Expected Output") claims for the
# same-architecture surgery ladder on its MegaNN pair: (transfer, preservation, specificity) as printed there.
CLAIMS = {
    "copy_head": ("0%", "99%", "—"),
    "procrustes_probe": ("0-19%", "95-99%", "—"),
    "activation_transplant": ("25%", "98%", "—"),
    "cascade": ("51.93%", "94.11%", "0.00%"),
    "cascade_isolated": ("51.93%", "94.11%", "0.00%"),
}
DEPTH_CLAIM = ("network-surgery-deep-dive.md: 'fresh' models (6-8 epochs) 28.2-97.9% transfer, 10-15 epochs 87.4%, "
               "extensively trained MEGA models 0% (figures of its SAE vector-space methods; the claim is that "
               "transfer falls with training depth)")


def sweep(out: Path, overrides: list[str], jobs: int) -> float:
    """One --multirun of scripts/transfer_concept.py into `out`; returns its seconds."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [sys.executable, str(ROOT / "scripts" / "transfer_concept.py"), "--multirun", *overrides, *launcher,
               f"hydra.sweep.dir={out}", "wandb.mode=disabled", "progress=false", "plots=false"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(command)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def read_jobs(folder: Path) -> list[dict]:
    jobs = []
    for config in sorted(folder.glob("*/config.yaml")):
        settings = yaml.safe_load(config.read_text())
        summary = json.loads((config.parent / "results" / "transfer.json").read_text())
        jobs.append({"seed": settings["seed"], "epochs": settings["model_a"]["epochs"], "summary": summary})
    return jobs


def interval(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """`mean ± half-width` of the 95% t interval, in percent; when the interval crosses a bound of the measure
    (a fraction cannot leave [0, 1]), the clipped interval is shown instead: `mean [low, high]`."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    d = paired_difference(values)
    if d.n == 1 or not math.isfinite(d.low):
        return f"{100 * d.mean:.1f}%"
    low, high = max(d.low, bounds[0]), min(d.high, bounds[1])
    if (low, high) != (d.low, d.high):
        return f"{100 * d.mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]%"
    return f"{100 * d.mean:.1f} ± {100 * (d.high - d.mean):.1f}%"


BOUNDS = {"preservation_change": (-1.0, 1.0)}


def per_seed(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.0f}" for v in values)


def method_table(jobs: list[dict]) -> tuple[str, dict]:
    methods = list(jobs[0]["summary"]["methods"])
    rows, data = [], {}
    header = ("| method | transfer ↑ | preservation ↑ | Δ preservation | specificity ↓ | transfer per seed | "
              "target images | labels | validation images | gradient steps | parameters changed | "
              "reference claim (transfer / preservation / specificity) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for name in methods:
        per = [job["summary"]["methods"][name] for job in jobs]
        cells = [interval([p["measures"][m] for p in per], BOUNDS.get(m, (0.0, 1.0))) for m in MEASURES]
        budget = {b: sum(float(p["budget"].get(b, 0)) for p in per) / len(per) for b in BUDGET}
        claim = " / ".join(CLAIMS.get(name, ("no claim",)))
        rows.append(f"| {name} | {' | '.join(cells)} | {per_seed([p['measures']['transfer'] for p in per])} | "
                    f"{budget['target_images']:.0f} | {'yes' if budget['target_labels'] else 'no'} | "
                    f"{budget['validation_images']:.0f} | {budget['gradient_steps']:.0f} | "
                    f"{budget['parameters_changed']:.0f} | {claim} |")
        data[name] = {"measures": {m: [p["measures"][m] for p in per] for m in MEASURES}, "budget": budget}
    models = [job["summary"]["models"] for job in jobs]
    note = (f"model A accuracy on its classes {interval([m['a']['own_accuracy'] for m in models])}; model B on its "
            f"classes {interval([m['b']['own_accuracy'] for m in models])}, its recall of the target "
            f"{interval([m['b']['transfer'] for m in models])} (n = {len(jobs)} seeds; mean ± 95% t interval)")
    return "\n".join([note, "", *rows]), data


def depth_table(jobs: list[dict], measure: str) -> str:
    depths = sorted({job["epochs"] for job in jobs})
    methods = list(jobs[0]["summary"]["methods"])
    header = f"| method | {' | '.join(f'{e} epochs' for e in depths)} | change {depths[0]} → {depths[-1]} (paired) |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in methods:
        by_depth = {e: {j["seed"]: j["summary"]["methods"][name]["measures"][measure] for j in jobs if j["epochs"] == e}
                    for e in depths}
        seeds = sorted(set(by_depth[depths[0]]) & set(by_depth[depths[-1]]))
        change = interval([by_depth[depths[-1]][s] - by_depth[depths[0]][s] for s in seeds], (-1.0, 1.0))
        rows.append(f"| {name} | {' | '.join(interval(list(by_depth[e].values())) for e in depths)} | {change} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_MNIST, help="MNIST IDX folder (default ../shared/data/mnist)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 5, 10, 20, 40], help="depths of part 2")
    parser.add_argument("--model", default="mlp_mega", help="model preset of A and B")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs (joblib launcher); 1: one after another")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "concept_transfer")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder; give the MNIST IDX folder (../shared/data/mnist)")
    seeds = ",".join(map(str, range(args.seeds)))
    common = [f"seed={seeds}", "dataset=mnist", f"dataset.path={args.data.resolve()}", f"model@model_a={args.model}",
              f"model@model_b={args.model}", f"concept.methods=[{','.join(METHODS)}]"]
    started = time.perf_counter()
    main_seconds = sweep(args.out / "methods", common, args.jobs)
    depths = ",".join(map(str, args.epochs))
    depth_seconds = sweep(args.out / "depth", [*common, f"model_a.epochs={depths}", "model_b.epochs=${model_a.epochs}",
                                               "model_a.keep_best=false", "model_b.keep_best=false"], args.jobs)
    table, data = method_table(read_jobs(args.out / "methods"))
    depth_jobs = read_jobs(args.out / "depth")
    command = f"python benchmarks/bench_concept_transfer.py --seeds {args.seeds} --epochs {' '.join(map(str, args.epochs))}"
    report = "\n".join([
        f"## Concept transfer on MNIST ({args.model} → {args.model}, {args.seeds} seeds)", "", f"`{command}`", "",
        table, "",
        f"### Training depth: A and B trained exactly E epochs ({args.seeds} seeds), transfer", "",
        depth_table(depth_jobs, "transfer"), "",
        "### Training depth: preservation", "", depth_table(depth_jobs, "preservation"), "",
        f"Reference claim on depth: {DEPTH_CLAIM}.", "",
        f"Wall clock: methods {main_seconds:.0f} s, depth sweep {depth_seconds:.0f} s, total "
        f"{time.perf_counter() - started:.0f} s ({args.jobs} parallel jobs).",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concept_transfer.md").write_text(report + "\n")
    (args.out / "concept_transfer.json").write_text(json.dumps({"methods": data, "seconds": {
        "methods": main_seconds, "depth": depth_seconds}}, indent=1))
    print(report)


if __name__ == "__main__":
    main()
