"""The SAE concept-space transfer benchmark: the reference's SAE-based methods on real MNIST, over its
architecture pairs, several seeds, beside its claimed figures; and its training-depth claim as a sweep.

    python benchmarks/bench_concept_space.py                         # 5 seeds, 5 pairs, depths 2 5 10 20 40
    python benchmarks/bench_concept_space.py --seeds 3 --pairs mlp_wide:mlp_wide --epochs 2 40 --out /tmp/cs

Every part is an ordinary `scripts/transfer_concept.py --multirun` sweep (readable with scripts/compare.py too).
Part 1, one sweep per architecture pair A <- B (the reference's: mega→mega, wide→wide, deep→wide,
superwide→verydeep, verydeep→superwide), seeds 0..S-1, each model preset's schedule (8 epochs, best validation
epoch kept), the SAE of each model `sae=concept_autoencoder` (the reference's, c = 24), and the methods: `none`,
`finetune_head` (the training baseline given the same k target images, batches and 50 labelled steps as the
SAE methods' optimisation), `sae_splice` (A reading its features through its SAE, nothing injected: the cost
every SAE method starts from), `sae_injection`, `preserved_injection`, `vector_space`, `cross_arch_aligner`,
`aligned_spatial`. Part 2: A and B of one pair (--depth-pair, default wide→wide) trained exactly E epochs
(keep_best=false), E in --epochs, the same methods.

Each cell is the mean over seeds with its 95% Student's t interval (clipped to the measure's range when it
crosses it, as `mean [low, high]`); beside it the reference's claim. A second table per pair gives each
method's paired (by seed) difference from finetune_head with its interval, and a third the alignment quality
the methods report (Procrustes residual on the centroids and on every shared image's codes, the aligner's
residual, linear CKA of A's and B's features and codes on the shared classes). Budgets are means over seeds.
An ablation (--ablation-pair, default mega→mega) runs the SAE methods again with `head_row=b` (B's target output
row copied into A: whether A's own, never-positive target row is what stops them); a larger-budget run
(--budget-pair, default mega→mega: LARGER_BUDGET, 300 steps at lr 0.05 with the edit fully on, finetune_head
given the same 300 steps); a sensitivity run
(--sensitivity-pair, default superwide → verydeep) repeats one pair with sae.l1_coefficient=0.005, since the
reference's 0.05 leaves the concept autoencoder of 2048-wide features with no live latent. Writes OUT/concept_space.md
and .json; goal on this 2-core machine: the whole benchmark under 20 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_concept_transfer import (BOUNDS, ROOT, SHARED_MNIST, depth_table, interval, per_seed,  # noqa: E402
                                    sweep)

from sae_ception.evaluation.paired import paired_difference  # noqa: E402

METHODS = ("none", "finetune_head", "sae_splice", "sae_injection", "preserved_injection", "vector_space",
           "cross_arch_aligner", "aligned_spatial", "aligned_spatial_reachable", "aligned_spatial_no_b")
EDITORS = ("preserved_injection", "vector_space", "cross_arch_aligner", "aligned_spatial", "aligned_spatial_reachable",
           "aligned_spatial_no_b")
# the larger budget: 300 Adam steps at lr 0.05 for every editor (finetune_head: 300 steps at its own lr), the edit
# fully on from the start (the blend's w: ρ = σ(w) keeps A's features in vector_space and cross_arch_aligner, so
# −5 there; b = p σ(w) applies the edit in aligned_spatial, so +5; r = σ(w) + 1 − p keeps A's in
# preserved_injection, so −5), and the learned detector alone (spatial_weight 0: the spatial one fires on the
# shared classes' own images)
LARGER_BUDGET = ["transfer.finetune_head.steps=300",
                 *[f"transfer.{m}.{k}" for m in EDITORS for k in ("steps=300", "lr=0.05")],
                 *[f"transfer.{m}.blend_init={'5' if m.startswith('aligned') else '-5'}" for m in EDITORS],
                 *[f"transfer.{m}.spatial_weight=0" for m in EDITORS if m != "preserved_injection"]]
MEASURES = ("transfer", "preservation", "preservation_change", "specificity")
PAIRS = ("mlp_mega:mlp_mega", "mlp_wide:mlp_wide", "mlp_wide:mlp_deep", "mlp_superwide:mlp_verydeep",
         "mlp_verydeep:mlp_superwide")  # A:B (B's concept goes into A); the reference's pairs
DIAGNOSTICS = ("procrustes_residual", "procrustes_residual_images", "aligner_residual", "cka_features",
               "cka_concepts", "free_projection_fraction", "target_margin", "head_reachable_margin",
               "decoder_reachable_margin")

# What the reference claims, (transfer, preservation) as printed, by method and (where it says) pair B -> A.
# concept-injection-framework.md "Results Summary" and methods 8-12; network-surgery-deep-dive.md tables.
CLAIMS = {
    "sae_injection": "100% / 0% (method 8)",
    "preserved_injection": "0.2% / 99.4% (method 9)",
    "vector_space": "49.6% / 97.0% (method 10, same architecture); 56.1% / 98.2%, specificity 4.9% (framework "
                    "'Method 1'); wide-wide 87.4% / 97.6%, deep-deep 87.4% / 97.8%, superwide-verydeep "
                    "97.9% / 96.1% (deep dive)",
    "cross_arch_aligner": "28.2% / 99.0% (similar architectures, deep→wide); 0% / 99.1% (very different); "
                          "verydeep→superwide 28.2% / 94.5% (deep dive); 42.2% / 98.7% (framework 'Method 2')",
    "aligned_spatial": "87.4% / 97.2% (method 12, cross-architecture); up to 97.9% for very different "
                       "architectures (deep dive)",
    "aligned_spatial_reachable": "control: no B (a code A's head calls the target)",
    "aligned_spatial_no_b": "control: no B (A's mean shared code; training alone)",
}
DEPTH_CLAIM = ("network-surgery-deep-dive.md: 'fresh' models (6-8 epochs) 28.2-97.9% transfer, 10-15 epochs 87.4%, "
               "extensively trained models 0%: transfer falls with training depth")


def pair_name(pair: str) -> str:
    a, b = pair.split(":")
    return f"{b.removeprefix('mlp_')} → {a.removeprefix('mlp_')}"


def read_runs(folder: Path) -> list[dict]:
    runs = []
    for config in sorted(folder.glob("*/config.yaml")):
        settings = yaml.safe_load(config.read_text())
        summary = json.loads((config.parent / "results" / "transfer.json").read_text())
        runs.append({"seed": settings["seed"], "epochs": settings["model_a"]["epochs"], "summary": summary})
    return runs


def _per(runs: list[dict], name: str) -> list[dict]:
    return [run["summary"]["methods"][name] for run in runs]


def method_table(runs: list[dict]) -> tuple[str, dict]:
    header = ("| method | transfer ↑ | preservation ↑ | Δ preservation | specificity ↓ | transfer per seed | "
              "target images | other images | gradient steps (SAEs' / own) | parameters changed / added | "
              "reference claim (transfer / preservation) |")
    rows, data = [header, "|" + "---|" * (header.count("|") - 1)], {}
    for name in METHODS:
        per = _per(runs, name)
        cells = [interval([p["measures"][m] for p in per], BOUNDS.get(m, (0.0, 1.0))) for m in MEASURES]
        mean = lambda key: sum(float(p["budget"].get(key, 0)) for p in per) / len(per)  # noqa: E731
        sae_steps = sum(float(p["diagnostics"].get("steps_sae", 0)) for p in per) / len(per)
        rows.append(f"| {name} | {' | '.join(cells)} | {per_seed([p['measures']['transfer'] for p in per])} | "
                    f"{mean('target_images'):.0f} | {mean('other_images'):.0f} | "
                    f"{mean('gradient_steps'):.0f} ({sae_steps:.0f} / {mean('gradient_steps') - sae_steps:.0f}) | "
                    f"{mean('parameters_changed'):.0f} / {mean('parameters_added'):.0f} | "
                    f"{CLAIMS.get(name, '—')} |")
        data[name] = {"measures": {m: [p["measures"][m] for p in per] for m in MEASURES},
                      "budget": {k: mean(k) for k in per[0]["budget"]},
                      "diagnostics": {k: [p["diagnostics"].get(k) for p in per] for k in DIAGNOSTICS}}
    models = [run["summary"]["models"] for run in runs]
    degenerate = {which: sum(any(f"SAE of model {which}" in w and "degenerate" in w for w in run["summary"]["warnings"])
                             for run in runs) for which in ("A", "B")}
    note = (f"model A accuracy on its classes {interval([m['a']['own_accuracy'] for m in models])}; model B on its "
            f"classes {interval([m['b']['own_accuracy'] for m in models])}, its recall of the target "
            f"{interval([m['b']['transfer'] for m in models])} (n = {len(runs)} seeds; mean ± 95% t interval); "
            f"degenerate SAEs (no latent fires: the SAE methods read an empty concept space): A's in "
            f"{degenerate['A']} of {len(runs)} seeds, B's in {degenerate['B']}")
    return "\n".join([note, "", *rows]), data


def versus_baseline(runs: list[dict], baseline: str = "finetune_head") -> str:
    """Each method minus `baseline`, paired by seed (same A, B, k target images and seed)."""
    header = f"| method | transfer − {baseline} | preservation − {baseline} | specificity − {baseline} |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    base = {run["seed"]: run["summary"]["methods"][baseline]["measures"] for run in runs}
    for name in METHODS:
        if name == baseline:
            continue
        cells = []
        for measure in ("transfer", "preservation", "specificity"):
            cells.append(interval([run["summary"]["methods"][name]["measures"][measure] - base[run["seed"]][measure]
                                   for run in runs], (-1.0, 1.0)))
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(rows)


def _plain(values: list) -> str:
    """A diagnostic's mean ± 95% t half-width over seeds (not a fraction: no percent, no clipping); `(n = m)` when
    only m of the seeds have it (a NaN: e.g. a degenerate SAE's)."""
    total = len(values)
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    d = paired_difference(values)
    if d.n == 1 or not math.isfinite(d.low):
        return f"{d.mean:.3f} (n = {d.n})"
    return f"{d.mean:.3f} ± {d.high - d.mean:.3f}" + (f" (n = {d.n})" if d.n < total else "")


def alignment_table(runs: list[dict]) -> str:
    shown = list(DIAGNOSTICS)
    header = f"| method | {' | '.join(shown)} |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in METHODS:
        per = _per(runs, name)
        if not any(d in p["diagnostics"] for p in per for d in shown):
            continue
        rows.append(f"| {name} | {' | '.join(_plain([p['diagnostics'].get(d) for p in per]) for d in shown)} |")
    return "\n".join(rows)


def summary_tables(pairs: dict) -> str:
    """Across pairs: each method's transfer / preservation (mean ± 95% t), then each pair's alignment quality and
    reach (read from vector_space and cross_arch_aligner, which report them all)."""
    names = list(pairs)
    header = f"| method | {' | '.join(pair_name(p) for p in names)} |"
    rows = ["Transfer / preservation by architecture pair (B → A):", "", header,
            "|" + "---|" * (header.count("|") - 1)]
    for method in METHODS:
        cells = [f"{interval(pairs[p][method]['measures']['transfer'])} / "
                 f"{interval(pairs[p][method]['measures']['preservation'])}" for p in names]
        rows.append(f"| {method} | {' | '.join(cells)} |")
    shown = [("procrustes_residual", "vector_space"), ("procrustes_residual_images", "vector_space"),
             ("aligner_residual", "cross_arch_aligner"), ("cka_features", "vector_space"),
             ("cka_concepts", "vector_space"), ("free_projection_fraction", "vector_space"),
             ("target_margin", "vector_space"), ("head_reachable_margin", "vector_space"),
             ("decoder_reachable_margin", "vector_space")]
    header = f"| pair (B → A) | {' | '.join(f'{d} ({m})' for d, m in shown)} |"
    rows += ["", "Alignment quality and reach by pair (mean ± 95% t half-width over seeds):", "", header,
             "|" + "---|" * (header.count("|") - 1)]
    for p in names:
        rows.append(f"| {pair_name(p)} | {' | '.join(_plain(pairs[p][m]['diagnostics'][d]) for d, m in shown)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_MNIST, help="MNIST IDX folder (default ../shared/data/mnist)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="A:B model presets (B's concept goes into A)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 5, 10, 20, 40], help="depths of part 2")
    parser.add_argument("--depth-pair", default="mlp_wide:mlp_wide", help="A:B presets of the depth sweep")
    parser.add_argument("--ablation-pair", default="mlp_mega:mlp_mega",
                        help="A:B presets of the head_row=b ablation (B's target output row copied into A); '' skips it")
    parser.add_argument("--budget-pair", default="mlp_mega:mlp_mega",
                        help="A:B presets run again with the larger budget (LARGER_BUDGET); '' skips it")
    parser.add_argument("--sensitivity-pair", default="mlp_verydeep:mlp_superwide",
                        help="A:B presets run again with sae.l1_coefficient=0.005 (the reference's 0.05 kills every "
                             "latent of the concept autoencoder on 2048-wide features); '' skips it")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs (joblib launcher); 1: one after another")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "concept_space")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder; give the MNIST IDX folder (../shared/data/mnist)")
    for option, pairs in (("--pairs", args.pairs), ("--depth-pair", [args.depth_pair]),
                          ("--ablation-pair", [args.ablation_pair]), ("--sensitivity-pair", [args.sensitivity_pair]),
                          ("--budget-pair", [args.budget_pair])):
        bad = [p for p in pairs if p and (p.count(":") != 1 or not all(p.split(":")))]
        if bad:
            parser.error(f"{option} {bad[0]}: give model presets as A:B, e.g. mlp_wide:mlp_deep")
    seeds = ",".join(map(str, range(args.seeds)))
    common = [f"seed={seeds}", "dataset=mnist", f"dataset.path={args.data.resolve()}", "sae=concept_autoencoder",
              f"concept.methods=[{','.join(METHODS)}]"]
    started, seconds, sections, data = time.perf_counter(), {}, [], {"pairs": {}}
    for pair in args.pairs:
        model_a, model_b = pair.split(":")
        folder = args.out / "pairs" / pair.replace(":", "__")
        seconds[pair] = sweep(folder, [*common, f"model@model_a={model_a}", f"model@model_b={model_b}"], args.jobs)
        runs = read_runs(folder)
        table, data["pairs"][pair] = method_table(runs)
        sections += [f"### {pair_name(pair)} (B → A: {model_b} → {model_a})", "", table, "",
                     "Paired by seed, each method minus finetune_head:", "", versus_baseline(runs), "",
                     "Alignment quality the methods report (mean ± 95% t half-width over seeds):", "",
                     alignment_table(runs), ""]
    if args.ablation_pair:
        model_a, model_b = args.ablation_pair.split(":")
        folder = args.out / "head_row_b"
        rows = [f"transfer.{m}.head_row=b" for m in METHODS if m not in ("none", "finetune_head")]
        seconds["head_row_b"] = sweep(folder, [*common, f"model@model_a={model_a}", f"model@model_b={model_b}", *rows],
                                      args.jobs)
        runs = read_runs(folder)
        table, data["head_row_b"] = method_table(runs)
        sections += [f"### Ablation: B's target output row copied into A (head_row=b), {pair_name(args.ablation_pair)}",
                     "", table, "", "Alignment quality and reach (mean ± 95% t half-width over seeds):", "",
                     alignment_table(runs), ""]
    if args.budget_pair:
        model_a, model_b = args.budget_pair.split(":")
        folder = args.out / "larger_budget"
        seconds["larger_budget"] = sweep(folder, [*common, f"model@model_a={model_a}", f"model@model_b={model_b}",
                                                  *LARGER_BUDGET], args.jobs)
        runs = read_runs(folder)
        table, data["larger_budget"] = method_table(runs)
        sections += [f"### A larger budget: 300 steps, lr 0.05, the edit fully on, {pair_name(args.budget_pair)}", "",
                     f"Overrides: `{' '.join(LARGER_BUDGET)}`", "", table, "",
                     "Paired by seed, each method minus finetune_head (300 steps):", "", versus_baseline(runs), "",
                     "Alignment quality and reach (mean ± 95% t half-width over seeds):", "", alignment_table(runs), ""]
    if args.sensitivity_pair:
        model_a, model_b = args.sensitivity_pair.split(":")
        folder = args.out / "l1_0.005"
        seconds["l1_0.005"] = sweep(folder, [*common, f"model@model_a={model_a}", f"model@model_b={model_b}",
                                             "sae.l1_coefficient=0.005"], args.jobs)
        runs = read_runs(folder)
        table, data["l1_0.005"] = method_table(runs)
        sections += [f"### Sensitivity: {pair_name(args.sensitivity_pair)} with sae.l1_coefficient=0.005", "", table,
                     "", "Alignment quality and reach (mean ± 95% t half-width over seeds):", "",
                     alignment_table(runs), ""]
    model_a, model_b = args.depth_pair.split(":")
    depths = ",".join(map(str, args.epochs))
    seconds["depth"] = sweep(args.out / "depth", [*common, f"model@model_a={model_a}", f"model@model_b={model_b}",
                                                  f"model_a.epochs={depths}", "model_b.epochs=${model_a.epochs}",
                                                  "model_a.keep_best=false", "model_b.keep_best=false"], args.jobs)
    depth_runs = read_runs(args.out / "depth")
    command = (f"python benchmarks/bench_concept_space.py --seeds {args.seeds} --pairs {' '.join(args.pairs)} "
               f"--epochs {' '.join(map(str, args.epochs))} --depth-pair {args.depth_pair} "
               f"--ablation-pair {args.ablation_pair or chr(39) * 2} "
               f"--sensitivity-pair {args.sensitivity_pair or chr(39) * 2} "
               f"--budget-pair {args.budget_pair or chr(39) * 2}")
    total = time.perf_counter() - started
    report = "\n".join([
        f"## SAE concept-space transfer on MNIST ({args.seeds} seeds)", "", f"`{command}`", "",
        summary_tables(data["pairs"]), "", *sections,
        f"### Training depth ({pair_name(args.depth_pair)}): A and B trained exactly E epochs, transfer", "",
        depth_table(depth_runs, "transfer"), "", "### Training depth: preservation", "",
        depth_table(depth_runs, "preservation"), "", f"Reference claim on depth: {DEPTH_CLAIM}.", "",
        f"Wall clock: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}; total {total:.0f} s "
        f"({args.jobs} parallel jobs).",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concept_space.md").write_text(report + "\n")
    data["seconds"] = seconds | {"total": total}
    (args.out / "concept_space.json").write_text(json.dumps(data, indent=1))
    print(report)


if __name__ == "__main__":
    main()
