"""Scale: a TopK SAE on a million activation rows, trained and evaluated with the whole suite in bounded memory.

    python benchmarks/bench_scale.py                      # 1,000,000 rows x 768 (float16 on disk), d_sae 16,384
    python benchmarks/bench_scale.py --rows 100000 --d-sae 4096 --out /tmp/scale   # a quick look

Creates a synthetic activation set on disk (float16, split 80/10/10 into train/val/test rows; labels from 10
classes; each row a non-negative mix of 16 of 4,096 unit directions, half of them drawn from its class's own 64,
with exponential weights, plus noise), then runs the product's own code on it, stage by stage:
- `sae`: `train_sae` trains a TopK SAE (k 32, batch 4,096, one epoch, Adam 1e-3) on the memory-mapped train rows;
- `own_fit`: the evaluation's check of the SAE on its training rows (`fit_on_training_rows`, a fixed sample);
- `encode`: `write_codes` encodes every test row once, storing the codes sparse on disk, and sums the SAE-quality
  family in the same pass;
- `metrics`: `representation_metrics` on the dense test rows and on the stored codes (CSI, U and the paper's
  variants, clustering, linear probes; the samples of `Sampling` are recorded in the output);
- `feature_report`: the most active features' statistics and strongest examples (`streamed_feature_statistics`),
  written as JSON.
For each stage: seconds and the process's peak resident memory (VmHWM, reset before the stage through
/proc/self/clear_refs; mapped file pages the stage touched count too). The SAE step's rows/s is given beside the
matmul bound measured in the same run, before and after training (`sae_throughput.matmul_bound`: the five GEMMs of
a dense step at these shapes), and beside the encoder GEMM alone (the one GEMM a step working on its k entries per
row cannot skip).
Goals on a 2-core CPU at the defaults: peak RSS under 4 GiB, the whole run under 20 minutes.

`--address-space-gib G` caps the process's address space (RLIMIT_AS) at its size after imports plus G GiB, and
first checks that the cap refuses a dense float32 matrix of the test codes (so the run proves the cap binds):
tests/evaluation/test_scale_memory.py runs a small version this way.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_throughput import matmul_bound  # noqa: E402

from sae_ception.evaluation.features import most_active_from_stats, streamed_feature_statistics  # noqa: E402
from sae_ception.evaluation.representations import (Representation, Sampling, encode_rows,  # noqa: E402
                                                    representation_metrics)
from sae_ception.evaluation.rows import DenseRows, write_codes  # noqa: E402
from sae_ception.evaluation.sae_quality import QualitySums, row_mean  # noqa: E402
from sae_ception.evaluation.unit_stats import unit_stats  # noqa: E402
from sae_ception.sae import build_sae, train_sae  # noqa: E402
from sae_ception.sae.topk import TopKSAEConfig  # noqa: E402
from sae_ception.sae.trainer import fit_on_training_rows  # noqa: E402
from sae_ception.utils.device import make_accelerator  # noqa: E402

GIB = 1 << 30


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def split_sizes(rows: int, test_share: float) -> dict[str, int]:
    """Rows per split: `test_share` of them each for validation and test, the rest for training."""
    held_out = int(rows * test_share)
    return {"train": rows - 2 * held_out, "val": held_out, "test": held_out}


def synthetic(folder: Path, sizes: dict[str, int], d_in: int, classes: int, seed: int, directions: int = 4096,
              active: int = 16, chunk: int = 65536) -> dict[str, int]:
    """Write train/val/test activations (float16 .npy, `sizes` rows each) and labels into `folder`."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(directions, d_in, generator=g), dim=1)
    own = torch.randperm(directions, generator=g)[:classes * 64].view(classes, 64)  # each class's own directions
    for split, n in sizes.items():
        acts = np.lib.format.open_memmap(folder / f"{split}.acts.npy", mode="w+", dtype=np.float16, shape=(n, d_in))
        labels = torch.randint(classes, (n,), generator=g)
        for start in range(0, n, chunk):
            y = labels[start:start + chunk]
            b = len(y)
            shared = torch.randint(directions, (b, active - active // 2), generator=g)
            mine = own[y][torch.arange(b)[:, None], torch.randint(64, (b, active // 2), generator=g)]
            index = torch.cat([shared, mine], 1)
            weights = torch.empty(index.shape).exponential_(generator=g)
            x = torch.nn.functional.embedding_bag(index, dictionary, per_sample_weights=weights, mode="sum")
            x += 0.01 * torch.randn(x.shape, generator=g)
            acts[start:start + b] = x.numpy().astype(np.float16)
        acts.flush()
        np.save(folder / f"{split}.labels.npy", labels.numpy())
        del acts
    return sizes


def load(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's rows memory-mapped copy-on-write (as the product's activation cache loads them) and its labels."""
    return (torch.from_numpy(np.load(folder / f"{split}.acts.npy", mmap_mode="c")),
            torch.from_numpy(np.load(folder / f"{split}.labels.npy")))


def encoder_gemm_bound(batch: int, d_in: int, d_sae: int, repeats: int = 10) -> float:
    """Rows/s of the encoder GEMM alone (batch x d_in @ d_in x d_sae, median of `repeats`): the one dense GEMM no
    SAE step can skip (a TopK step that works on its k entries per row needs little else)."""
    x, w = torch.randn(batch, d_in), torch.randn(d_in, d_sae)
    for _ in range(2):
        x @ w
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - started)
    return batch / sorted(times)[len(times) // 2]


def cap_address_space(headroom_gib: float, dense_codes_bytes: int) -> dict:
    """RLIMIT_AS = the current address space + headroom; then a dense float32 code matrix must be refused."""
    limit = _status("VmSize") + int(headroom_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        dense = torch.empty(dense_codes_bytes // 4, dtype=torch.float32)
        dense.fill_(0)
    except (MemoryError, RuntimeError):
        refused = True
    else:
        refused = False
        del dense
    return {"limit_bytes": limit, "dense_codes_bytes": dense_codes_bytes, "dense_codes_refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="activation rows in all (train, val and test)")
    parser.add_argument("--test-share", type=float, default=0.1, help="share of the rows for each of val and test")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the data, codes and results (default: a temp folder)")
    parser.add_argument("--address-space-gib", type=float, default=None,
                        help="cap RLIMIT_AS at the size after imports + this many GiB (see the docstring)")
    parser.add_argument("--sampling", default=None, help="JSON of Sampling fields (e.g. smaller samples for tests)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    data = out / "activations"
    data.mkdir(parents=True, exist_ok=True)
    report: dict = {"settings": vars(args), "stages": {}}
    sizes = split_sizes(args.rows, args.test_share)
    test_rows = sizes["test"]
    if args.address_space_gib is not None:
        report["address_space"] = cap_address_space(args.address_space_gib, test_rows * args.d_sae * 4)
        print(f"address space capped at {report['address_space']['limit_bytes'] / GIB:.2f} GiB; a dense float32 "
              f"matrix of the test codes ({test_rows * args.d_sae * 4 / GIB:.2f} GiB) "
              f"{'is refused' if report['address_space']['dense_codes_refused'] else 'STILL FITS'}", flush=True)
    started_all = time.perf_counter()

    def stage(name: str, run):
        reset_peak()
        started = time.perf_counter()
        value = run()
        seconds = time.perf_counter() - started
        report["stages"][name] = {"seconds": round(seconds, 2), "peak_rss_gib": round(_status("VmHWM") / GIB, 3)}
        print(f"{name:<16} {seconds:8.1f} s   peak RSS {_status('VmHWM') / GIB:6.2f} GiB", flush=True)
        return value

    stage("synthetic_data", lambda: synthetic(data, sizes, args.d_in, args.classes, args.seed))
    train_X, train_y = load(data, "train")
    test_X, test_y = load(data, "test")
    cfg = TopKSAEConfig(d_sae=args.d_sae, k=args.k, epochs=1, batch_size=args.batch_size, lr=1e-3, log_every=50)
    sae = build_sae(cfg, args.d_in)
    accelerator = make_accelerator("cpu", "no")
    bound_before = matmul_bound(args.batch_size, args.d_in, args.d_sae, repeats=10)
    encoder_before = encoder_gemm_bound(args.batch_size, args.d_in, args.d_sae)
    stats = stage("sae", lambda: train_sae(sae, train_X, cfg, accelerator=accelerator, seed=args.seed,
                                           show_progress=False, what="bench_scale SAE"))
    bound_after = matmul_bound(args.batch_size, args.d_in, args.d_sae, repeats=10)
    bound = (bound_before[0] + bound_after[0]) / 2
    encoder_bound = (encoder_before + encoder_gemm_bound(args.batch_size, args.d_in, args.d_sae)) / 2
    rows_per_s = sizes["train"] / report["stages"]["sae"]["seconds"]
    report["sae_training"] = {"rows_per_s": rows_per_s, "matmul_bound_rows_per_s": bound,
                              "fraction_of_bound": rows_per_s / bound, "bound_gflops": (bound_before[1] + bound_after[1]) / 2,
                              "encoder_gemm_rows_per_s": encoder_bound, "fraction_of_encoder_gemm": rows_per_s / encoder_bound,
                              "steps": stats["steps"], "final_fit": stats["final_fit"], "dead_fraction": stats["dead_fraction"]}
    sae.eval()
    stage("own_fit", lambda: fit_on_training_rows(sae, train_X))
    sums = QualitySums(sae, row_mean(test_X))
    codes = stage("encode", lambda: write_codes(sae, test_X, out / "codes" / "test", 1024, on_batch=sums.update))
    report["sae_quality"] = sums.result()
    report["codes"] = {"rows": codes.shape[0], "d_sae": codes.shape[1], "nnz": codes.nnz,
                       "disk_bytes": sum(p.stat().st_size for p in codes.folder.iterdir()),
                       "dense_float32_bytes": codes.shape[0] * codes.shape[1] * 4}
    sampling = Sampling(**json.loads(args.sampling)) if args.sampling else Sampling()
    train_rows = DenseRows(train_X)
    representations = {
        "dense": Representation(DenseRows(test_X), train_rows.take, len(train_y)),
        "sae": Representation(codes, lambda rows: encode_rows(sae, train_rows.take(rows)), len(train_y), codes=True),
    }
    family_seconds: dict[str, float] = {}
    families, _ = stage("metrics", lambda: representation_metrics(representations, train_y, test_y, args.seed,
                                                                  sampling, timings=family_seconds))
    report["metrics"], report["metric_seconds"] = families, family_seconds
    report["sampling"] = sampling.record(len(train_y), len(test_y), args.seed)

    def feature_report():
        code_stats = unit_stats(codes, test_y, sampling.chunk_rows)
        features = most_active_from_stats(code_stats, 16)
        entries = streamed_feature_statistics(codes, test_y, code_stats, features, args.classes, 10, sampling.chunk_rows)
        (out / "feature_report.json").write_text(json.dumps({"num_examples": len(test_y), "features": entries}))
        return entries

    stage("feature_report", feature_report)
    total = time.perf_counter() - started_all
    peak = max(stage["peak_rss_gib"] for stage in report["stages"].values())
    report["total_seconds"], report["peak_rss_gib"] = round(total, 1), peak
    report["max_rss_gib_getrusage"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    (out / "bench_scale.json").write_text(json.dumps(report, indent=1, default=float))
    quality = report["sae_quality"]
    print(f"\n{sizes['train']:,} train / {sizes['val']:,} val / {sizes['test']:,} test rows x {args.d_in} (float16), "
          f"TopK k={args.k}, d_sae={args.d_sae:,}")
    print(f"SAE step: {rows_per_s:,.0f} rows/s = {rows_per_s / bound:.0%} of the matmul bound "
          f"({bound:,.0f} rows/s, {report['sae_training']['bound_gflops']:.0f} GFLOP/s on a step's 5 GEMMs, measured before "
          f"and after) = {rows_per_s / encoder_bound:.0%} of the encoder GEMM alone ({encoder_bound:,.0f} rows/s)")
    print(f"test codes: {codes.nnz:,} non-zeros, {report['codes']['disk_bytes'] / GIB:.3f} GiB on disk "
          f"(dense float32: {report['codes']['dense_float32_bytes'] / GIB:.1f} GiB)")
    print(f"held-out: mse {quality['mse']:.4g}, EV {quality['explained_variance']:.3f}, L0 {quality['l0']:.1f}, "
          f"dead {quality['dead_fraction']:.1%}; probe dense {families['probe']['dense_accuracy']:.3f}, "
          f"sae {families['probe']['sae_accuracy']:.3f}")
    print("metric families: " + ", ".join(f"{k} {v:.1f} s" for k, v in family_seconds.items()))
    print(f"TOTAL {total:.1f} s ({total / 60:.1f} min), peak RSS {peak:.2f} GiB "
          f"(goals: < 20 min, < 4 GiB) -> {out / 'bench_scale.json'}")


if __name__ == "__main__":
    main()
