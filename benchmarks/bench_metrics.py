"""Time the per-cycle metric suite at scale: 50,000 examples x 4,096 SAE latents (goal: under a minute).

    python benchmarks/bench_metrics.py                  # the issue's scale
    python benchmarks/bench_metrics.py --n 5000 --latents 512

Synthetic but structured data: sparse non-negative codes whose active latents depend on the label,
a 64-dim dense layer, 10 classes. Each family is timed on its own, then the total is printed.
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_ception.evaluation.clustering import clustering_metrics
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics, unit_scores
from sae_ception.evaluation.paper_metrics import paper_monosemanticity_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy
from sae_ception.evaluation.representations import pca_2d


def synthetic(n: int, latents: int, dense: int, classes: int, generator: torch.Generator):
    labels = torch.randint(0, classes, (n,), generator=generator)
    preferred = torch.rand(classes, latents, generator=generator) < 16 / latents  # each class owns ~16 latents
    noise = torch.rand(n, latents, generator=generator) < 4 / latents
    active = preferred[labels] & (torch.rand(n, latents, generator=generator) < 0.7) | noise
    codes = active * torch.rand(n, latents, generator=generator)
    dense_acts = torch.relu(codes @ torch.randn(latents, dense, generator=generator) / 4)
    return codes, dense_acts, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--dense", type=int, default=64)
    parser.add_argument("--train-fraction", type=float, default=0.8, help="part fitted by the probes")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    codes, dense_acts, labels = synthetic(args.n, args.latents, args.dense, 10, g)
    cut = int(args.n * args.train_fraction)
    timings = {}

    def timed(name, fn):
        started = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - started
        return out

    for name, x in (("sae", codes), ("dense", dense_acts)):
        scores = timed(f"monosemanticity_{name}", lambda: unit_scores(x, labels))
        monosemanticity_metrics(x, labels, scores=scores)
        timed(f"paper_variants_{name}", lambda: paper_monosemanticity_metrics(x, labels))  # CSI/U as the paper's code
        timed(f"clustering_{name}", lambda: clustering_metrics(x, labels, seed=0))
        timed(f"probe_{name}", lambda: linear_probe_accuracy(x[:cut], labels[:cut], x[cut:], labels[cut:], seed=0))
        timed(f"pca_{name}", lambda: pca_2d(x))
    print(f"{args.n} examples x {args.latents} latents (+ {args.dense}-dim dense layer), torch threads {torch.get_num_threads()}")
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds:7.2f} s")
    print(f"  {'total':<22} {sum(timings.values()):7.2f} s   (goal: under 60 s)")


if __name__ == "__main__":
    main()
