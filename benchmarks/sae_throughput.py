"""SAE training throughput: this product's trainer against SAELens's, on the same activations, next to the
machine's matmul limit.

    python -m venv .venv-bench && . .venv-bench/bin/activate
    pip install "torch==2.13.0" -e . sae-lens -c benchmarks/constraints.txt   # SAELens only in this venv
    python benchmarks/sae_throughput.py                  # 262,144 x 128 rows, d_sae 1024, batch 4096
    python benchmarks/sae_throughput.py --rows 32768 --repeats 1              # a quick look

Data: a seeded matrix of sparse non-negative combinations of 1,024 random unit directions plus small noise
(`synthetic`), and a held-out slice for quality. Each trainer trains one epoch with Adam after a warm-up
run; rows/s is the median over repeats (seeds 0, 1, ...) of the whole training call (normalisation fit
included), and MSE, EV and L0 are the medians over the same seeds (one seed's SAE varies by ~10%).
The matmul bound times the five float32 GEMMs one SAE step needs at these shapes (encoder and decoder
forward, decoder input-gradient, decoder and encoder weight gradients), each at its median of 50
back-to-back runs, before and after the trainers run (the faster of the two counts, so a noisy moment
cannot lower the bound), and says how many rows per second a step made of nothing else would reach. SAELens is not a dependency of the product; without it the
table shows the product's rows only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from sae_ception.sae import build_sae, train_sae
from sae_ception.sae.relu import ReluSAEConfig
from sae_ception.sae.topk import TopKSAEConfig
from sae_ception.utils.device import make_accelerator


def synthetic(rows: int, d_in: int, directions: int = 1024, active: float = 8.0, noise: float = 0.01,
              seed: int = 0, chunk: int = 16384) -> torch.Tensor:
    """Rows = Σ c_j u_j + noise: each of `directions` unit vectors u_j is active with probability
    active / directions, with an exponential coefficient c_j; built in chunks to bound memory."""
    g = torch.Generator().manual_seed(seed)
    dirs_JD = torch.randn(directions, d_in, generator=g)
    dirs_JD /= dirs_JD.norm(dim=1, keepdim=True)
    out = torch.empty(rows, d_in)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        on_NJ = torch.rand(n, directions, generator=g) < active / directions
        coeff_NJ = on_NJ * torch.empty(n, directions).exponential_(generator=g)
        out[start:start + n] = coeff_NJ @ dirs_JD + noise * torch.randn(n, d_in, generator=g)
    return out


def matmul_bound(batch: int, d_in: int, d_sae: int, repeats: int = 50) -> tuple[float, float]:
    """(rows/s if a step were only its 5 GEMMs, GFLOP/s achieved on them), timed at the SAE's shapes: each
    GEMM at its median over `repeats` back-to-back runs (the sustained rate a training loop can expect)."""
    x_BD, g_BD = torch.randn(batch, d_in), torch.randn(batch, d_in)
    z_BF, W_DF, W_FD = torch.randn(batch, d_sae), torch.randn(d_in, d_sae), torch.randn(d_sae, d_in)
    gemms = [lambda: x_BD @ W_DF, lambda: z_BF @ W_FD, lambda: g_BD @ W_FD.T,
             lambda: z_BF.T @ g_BD, lambda: x_BD.T @ z_BF]
    seconds = 0.0
    for gemm in gemms:
        for _ in range(3):
            gemm()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            gemm()
            times.append(time.perf_counter() - started)
        seconds += statistics.median(times)
    return batch / seconds, 5 * 2 * batch * d_in * d_sae / seconds / 1e9


@dataclass
class Quality:
    mse: float  # per element, raw space
    explained_variance: float
    l0: float


@torch.no_grad()
def quality(encode: Callable, decode: Callable, held_out: torch.Tensor) -> Quality:
    codes = encode(held_out)
    err = (decode(codes) - held_out).pow(2)
    spread = (held_out - held_out.mean(0)).pow(2).sum()
    return Quality(err.mean().item(), 1 - (err.sum() / spread).item(), (codes != 0).float().sum(-1).mean().item())


# --- the product's trainer (the one every stage uses) ------------------------------------------------------
def product_config(kind: str, args) -> object:
    common = dict(d_sae=args.d_sae, epochs=1, batch_size=args.batch, lr=args.lr, normalize="none",
                  grad_clip=1.0, dead_after_examples=args.batch * 100, log_every=10**9)
    if kind == "relu":
        return ReluSAEConfig(type="relu", l1_coefficient=args.l1 / args.d_in, **common)
    return TopKSAEConfig(type="topk", k=args.k, **common)


def train_product(kind: str, acts: torch.Tensor, args, seed: int):
    torch.manual_seed(seed)
    cfg = product_config(kind, args)
    sae = build_sae(cfg, d_in=acts.shape[1])
    train_sae(sae, acts, cfg, accelerator=make_accelerator("cpu", "no"), seed=seed, show_progress=False)
    return sae.encode, sae.decode


# --- SAELens's trainer ---------------------------------------------------------------------------------------
def train_saelens(kind: str, acts: torch.Tensor, args, seed: int):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    common = dict(d_in=acts.shape[1], d_sae=args.d_sae, device="cpu", dtype="float32", normalize_activations="none")
    if args.saelens_decoder_init_norm is not None:
        common["decoder_init_norm"] = args.saelens_decoder_init_norm
    if kind == "relu":  # SAELens sums the squared error over dims: its L1 weight is D times ours for the same trade-off
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=args.l1, **common))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common))
    n = len(acts) - len(acts) % args.batch
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))[:n]
    batches = (acts[idx] for idx in order.split(args.batch))
    trainer_cfg = SAETrainerConfig(total_training_samples=n, train_batch_size_samples=args.batch, lr=args.lr,
                                   lr_end=args.lr, device="cpu")
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches).fit()
    return sae.encode, sae.decode


def saelens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        return False
    return True


def timed_runs(train: Callable, kind: str, acts: torch.Tensor, held_out: torch.Tensor, args) -> tuple[float, Quality]:
    """Median wall-clock seconds and median held-out quality over `args.repeats` seeds (0, 1, ...: the
    same for every trainer), after one warm-up run on a slice."""
    train(kind, acts[: args.batch * 4], args, seed=0)
    times, scores = [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        encode, decode = train(kind, acts, args, seed=repeat)
        times.append(time.perf_counter() - started)
        scores.append(quality(encode, decode, held_out))
    median = Quality(*(statistics.median(getattr(q, f) for q in scores) for f in ("mse", "explained_variance", "l0")))
    return statistics.median(times), median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--held-out", type=int, default=16_384)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--l1", type=float, default=0.5, help="SAELens-scale L1 coefficient (squared error summed over dims)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--saelens-decoder-init-norm", type=float, default=None,
                        help="SAELens's decoder_init_norm (default: the library's, 0.1); 1.0 starts it like the product")
    args = parser.parse_args()

    data = synthetic(args.rows + args.held_out, args.d_in)
    acts, held_out = data[: args.rows], data[args.rows:]
    bound_rows, gflops = matmul_bound(args.batch, args.d_in, args.d_sae)
    print(f"{args.rows} rows x {args.d_in} dims, d_sae {args.d_sae}, batch {args.batch}, one epoch, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    trainers = [("sae-ception", train_product)] + ([("SAELens", train_saelens)] if saelens_available() else [])
    rows = {}
    for kind in ("relu", "topk"):
        for name, train in trainers:
            seconds, median_quality = timed_runs(train, kind, acts, held_out, args)
            rows[(kind, name)] = (args.rows / seconds, median_quality)
    bound_rows, gflops = max((bound_rows, gflops), matmul_bound(args.batch, args.d_in, args.d_sae))  # before and after
    print(f"matmul bound: {bound_rows:,.0f} rows/s ({gflops:.0f} GFLOP/s on the 5 GEMMs of a step; the faster of "
          "two measurements, before and after training)")
    print(f"\n{'SAE':<6} {'trainer':<12} {'rows/s':>10} {'vs SAELens':>10} {'of bound':>9} "
          f"{'held-out MSE':>13} {'EV':>7} {'L0':>7}")
    for (kind, name), (speed, q) in rows.items():
        base = rows.get((kind, "SAELens"))
        ratio = f"{speed / base[0]:.2f}x" if base else "n/a"
        print(f"{kind:<6} {name:<12} {speed:>10,.0f} {ratio:>10} {speed / bound_rows:>8.0%} "
              f"{q.mse:>13.5f} {q.explained_variance:>7.4f} {q.l0:>7.1f}")
    if not saelens_available():
        print("\nSAELens is not installed here: see the docstring for the benchmark's environment.")


if __name__ == "__main__":
    main()
