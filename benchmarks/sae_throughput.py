"""SAE training throughput: this product's trainer against SAELens's, on the same activations, next to the
machine's matmul limit.

    pip install "torch==2.13.0" -e ".[dev]"             # the dev extra carries SAELens (or: pip install sae-lens)
    python benchmarks/sae_throughput.py                  # 262,144 x 128 rows, d_sae 1024, batch 4096
    python benchmarks/sae_throughput.py --rows 32768 --repeats 1              # a quick look
    python benchmarks/sae_throughput.py --device cuda --rows 1048576 --d-in 512 --d-sae 8192   # on a GPU
    python benchmarks/sae_throughput.py --variants jumprelu,batchtopk --threads 1   # the other two variants
    python benchmarks/sae_throughput.py --variants all                              # all four

Data: a seeded matrix of sparse non-negative combinations of 1,024 random unit directions plus small noise
(`synthetic`), and a held-out slice for quality. Each trainer trains one epoch with Adam after an untimed
warm-up run; rows/s is the median over repeats (seeds 0, 1, ...) of the whole training call (normalisation fit
included), and MSE, EV and L0 are the medians over the same seeds (one seed's SAE varies by ~10%).
The matmul bound times the five float32 GEMMs one SAE step needs at these shapes (encoder and decoder
forward, decoder input-gradient, decoder and encoder weight gradients), each at its median of 50
back-to-back runs, and says how many rows per second a step made of nothing else would reach. It is
measured right before every timed run, and each run's fraction of the bound uses its own measurement.

Both trainers train the same SAE with the same hyperparameters: for ReLU-L1, SAELens's StandardTrainingSAE
(free decoder rows started at norm 0.1, tied encoder, L1 weighted by row norms) is the product's
`decoder_norm=free`; the product's loss is SAELens's divided by d_in (mean over dims, not sum), so its L1
weight and gradient-clipping norm are SAELens's divided by d_in. SAELens is not a dependency of the
product; without it the table shows the product's rows only. A last row trains the product's default ReLU
SAE (unit-norm decoder rows) with its L1 coefficient calibrated to SAELens's L0 on seed 0; its L0 over
the other seeds can differ, so read its L0 column before comparing its MSE.

JumpReLU (`--variants ...,jumprelu`): SAELens's JumpReLUTrainingSAE in its default "step" mode (DeepMind's L0
penalty, straight-through gradients to the threshold only) is the product's JumpReLU SAE. Mapping: the same
initial threshold (`--initial-threshold`, SAELens's default 0.01) and kernel width (`--bandwidth`, both
defaults 0.05; both trainers train on raw activations here, so both are in the same units); the L0
coefficient is SAELens's divided by d_in (`--l0`, SAELens-scale; the same reason as ReLU's L1), and so is
the clipping norm. The product keeps decoder rows at unit norm (DeepMind's constraint) and has no
free-decoder option for JumpReLU, so SAELens's rows start at unit norm too (`decoder_init_norm` 1.0, not
its 0.1: codes, thresholds and the kernel then start on the same scale) but then drift freely. SAELens
projects its threshold to >= 0 in place; the product clamps it in the graph (a negative threshold
parameter gets no gradient). The two parametrisations need not reach the same L0, so a last JumpReLU row
calibrates the product to SAELens's L0 as the calibrated ReLU row does, but on the median L0 over the timed
seeds (one seed's L0 differs from another's by up to a quarter here, where ReLU's calibrates on seed 0),
and through its initial threshold, not its L0 coefficient: in one epoch of 64 Adam steps a threshold
moves by at most about 64 x lr = 0.064 whatever the coefficient (x256 the coefficient lowered L0 by only a
sixth at the default shapes), while the initial threshold sets which pre-activations pass from the start.

BatchTopK (`--variants ...,batchtopk`): SAELens's BatchTopKTrainingSAE (k·B largest activations of each
batch, ReLU; decoder rows started at norm 0.1 and pre-activations scaled by the row norms, so its
function is that of unit rows, as for TopK) is the product's BatchTopK SAE with the same k. Neither has
dead latents in one epoch at these settings (SAELens counts a latent dead after 1,000 silent steps, the
product after 100 batches or an epoch), so neither AuxK term is active. Held-out quality uses each
trainer's own encode: the product's inference threshold (estimated from the training rows when training
ends, inside the timed call), SAELens's training SAE's batch top-k over the held-out rows (its running
threshold, an average with rate 0.01, is far from converged after one short epoch); both L0s are then
about k.

`--threads N` sets torch's CPU threads for everything (the matmul bound included): on a shared machine
one thread per run is often the steadier measurement.

`--device cuda` runs both trainers, their data and the matmul bound on the GPU (timings synchronise the
device before reading the clock); benchmarks/device_check.sh runs it that way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from sae_ception.sae import build_sae, train_sae
from sae_ception.sae.batchtopk import BatchTopKSAEConfig
from sae_ception.sae.jumprelu import JumpReLUSAEConfig
from sae_ception.sae.relu import ReluSAEConfig
from sae_ception.sae.topk import TopKSAEConfig
from sae_ception.utils.device import make_accelerator


VARIANTS = ("relu", "topk", "jumprelu", "batchtopk")
# the argument each calibrated row moves to reach SAELens's L0 (L0 falls as it grows): see the module docstring
CALIBRATED = {"relu": "l1", "jumprelu": "initial_threshold"}


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


def sync(device: str) -> None:
    """Wait for queued GPU work, so a clock read after it times the work itself (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_bound(batch: int, d_in: int, d_sae: int, repeats: int = 50, device: str = "cpu") -> tuple[float, float]:
    """(rows/s if a step were only its 5 GEMMs, GFLOP/s achieved on them), timed at the SAE's shapes: each
    GEMM at its median over `repeats` back-to-back runs (the sustained rate a training loop can expect)."""
    x_BD, g_BD = torch.randn(batch, d_in, device=device), torch.randn(batch, d_in, device=device)
    z_BF = torch.randn(batch, d_sae, device=device)
    W_DF, W_FD = torch.randn(d_in, d_sae, device=device), torch.randn(d_sae, d_in, device=device)
    gemms = [lambda: x_BD @ W_DF, lambda: z_BF @ W_FD, lambda: g_BD @ W_FD.T,
             lambda: z_BF.T @ g_BD, lambda: x_BD.T @ z_BF]
    seconds = 0.0
    for gemm in gemms:
        for _ in range(3):
            gemm()
        times = []
        for _ in range(repeats):
            sync(device)
            started = time.perf_counter()
            gemm()
            sync(device)
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
    """The SAE SAELens trains: for ReLU, a free decoder started at `--decoder-init-norm` with the L1 term
    weighted by decoder-row norms (SAELens's StandardTrainingSAE); `args.unit_decoder` gives the product's
    default instead (rows renormalised every step). JumpReLU and BatchTopK: see the module docstring."""
    # SAELens clips its gradient at norm 1 on a loss summed over dims, d_in times the product's per-element mean
    common = dict(d_sae=args.d_sae, epochs=1, batch_size=args.batch, lr=args.lr, normalize="none",
                  grad_clip=1.0 / args.d_in, dead_after_examples=args.batch * 100, log_every=10**9)
    if kind == "relu":  # SAELens sums the squared error over dims, the product averages: L1 weight / d_in
        decoder = dict(decoder_norm="unit") if getattr(args, "unit_decoder", False) else \
            dict(decoder_norm="free", decoder_init_norm=args.decoder_init_norm)
        return ReluSAEConfig(type="relu", l1_coefficient=args.l1 / args.d_in, **decoder, **common)
    if kind == "jumprelu":  # likewise the L0 weight / d_in
        return JumpReLUSAEConfig(type="jumprelu", l0_coefficient=args.l0 / args.d_in, bandwidth=args.bandwidth,
                                 initial_threshold=args.initial_threshold, **common)
    if kind == "batchtopk":
        return BatchTopKSAEConfig(type="batchtopk", k=args.k, **common)
    return TopKSAEConfig(type="topk", k=args.k, **common)


def train_product(kind: str, acts: torch.Tensor, args, seed: int):
    torch.manual_seed(seed)
    cfg = product_config(kind, args)
    sae = build_sae(cfg, d_in=acts.shape[1])
    train_sae(sae, acts, cfg, accelerator=make_accelerator(args.device, "no"), seed=seed, show_progress=False)
    return sae.encode, sae.decode


# --- SAELens's trainer ---------------------------------------------------------------------------------------
def train_saelens(kind: str, acts: torch.Tensor, args, seed: int):
    from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                          JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                          TopKTrainingSAEConfig)
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    common = dict(d_in=acts.shape[1], d_sae=args.d_sae, device=args.device, dtype="float32", normalize_activations="none")
    if kind == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=args.l1,
                                                            decoder_init_norm=args.decoder_init_norm, **common))
    elif kind == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=args.l0, jumprelu_bandwidth=args.bandwidth, jumprelu_init_threshold=args.initial_threshold,
            decoder_init_norm=args.jumprelu_decoder_init_norm, **common))
    elif kind == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=args.k, **common))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common))
    n = len(acts) - len(acts) % args.batch
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))[:n].to(acts.device)
    batches = (acts[idx] for idx in order.split(args.batch))
    trainer_cfg = SAETrainerConfig(total_training_samples=n, train_batch_size_samples=args.batch, lr=args.lr,
                                   lr_end=args.lr, device=args.device)
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches).fit()
    return sae.encode, sae.decode


def saelens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        return False
    return True


def timed_runs(train: Callable, kind: str, acts: torch.Tensor, held_out: torch.Tensor, args) -> dict:
    """Median rows/s, median fraction of the matmul bound and median held-out quality over `args.repeats`
    seeds (0, 1, ...: the same for every trainer), after one untimed warm-up run. The bound is measured
    right before each run and each run is compared with its own bound, so drift in the machine's speed
    (this is a shared VM) cancels out of the fraction."""
    train(kind, acts, args, seed=0)  # a whole warm-up run: the first runs in a process are slower
    speeds, fractions, bounds, scores = [], [], [], []
    for repeat in range(args.repeats):
        bound, _ = matmul_bound(args.batch, args.d_in, args.d_sae, device=args.device)
        sync(args.device)
        started = time.perf_counter()
        encode, decode = train(kind, acts, args, seed=repeat)
        sync(args.device)
        speed = len(acts) / (time.perf_counter() - started)
        speeds.append(speed)
        fractions.append(speed / bound)
        bounds.append(bound)
        scores.append(quality(encode, decode, held_out))
    median = Quality(*(statistics.median(getattr(q, f) for q in scores) for f in ("mse", "explained_variance", "l0")))
    return {"speed": statistics.median(speeds), "fraction": statistics.median(fractions),
            "fractions": fractions, "bounds": bounds, "quality": median}


def match_l0(kind: str, acts: torch.Tensor, held_out: torch.Tensor, args, target_l0: float,
             steps: int = 6, seeds: int = 1) -> tuple[float, dict]:
    """The product's `kind` SAE (ReLU: its default, unit decoder rows) with the setting `CALIBRATED[kind]` (ReLU:
    --l1; JumpReLU: --initial-threshold) rescaled until its held-out L0 (the median over seeds 0 .. seeds−1)
    matches `target_l0`: bracket by halving or doubling it, then `steps` interpolations in log setting / log
    L0 inside the bracket (L0 falls as the setting grows). Quality is then compared at equal sparsity.
    Returns (the setting, `timed_runs` at it)."""
    import math

    penalty = CALIBRATED[kind]
    args = argparse.Namespace(**{**vars(args), "unit_decoder": True})
    with_penalty = lambda value: argparse.Namespace(**{**vars(args), penalty: value})  # noqa: E731

    def log_l0(value: float) -> float:
        l0s = [quality(*train_product(kind, acts, with_penalty(value), seed=seed), held_out).l0
               for seed in range(seeds)]
        return math.log(max(statistics.median(l0s), 1e-3))

    goal = math.log(target_l0)
    start = getattr(args, penalty)
    low, high = (math.log(start), log_l0(start)), None  # (log coefficient, log L0) on each side of the goal
    factor = 0.5 if low[1] < goal else 2.0
    for _ in range(8):
        x = low[0] + math.log(factor)
        point = (x, log_l0(math.exp(x)))
        if (point[1] - goal) * (low[1] - goal) <= 0:
            high = point
            break
        low = point
    if high is None:
        return math.exp(low[0]), timed_runs(train_product, kind, acts, held_out, with_penalty(math.exp(low[0])))
    for _ in range(steps):
        x = low[0] + (goal - low[1]) * (high[0] - low[0]) / (high[1] - low[1]) if high[1] != low[1] else (low[0] + high[0]) / 2
        point = (x, log_l0(math.exp(x)))
        if abs(point[1] - goal) < 0.01:
            low = high = point
            break
        if (point[1] - goal) * (low[1] - goal) > 0:
            low = point
        else:
            high = point
    best = min((low, high), key=lambda p: abs(p[1] - goal))
    value = math.exp(best[0])
    return value, timed_runs(train_product, kind, acts, held_out, with_penalty(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both trainers, the data and the bound)")
    parser.add_argument("--variants", default="relu,topk",
                        help=f"comma-separated SAE variants to time, of {', '.join(VARIANTS)}; or all")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--held-out", type=int, default=16_384)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--l1", type=float, default=0.5, help="SAELens-scale L1 coefficient (squared error summed over dims)")
    parser.add_argument("--k", type=int, default=16, help="TopK and BatchTopK: latents kept per example (on average)")
    parser.add_argument("--l0", type=float, default=1.0,
                        help="JumpReLU: SAELens-scale L0 coefficient (SAELens's default)")
    parser.add_argument("--bandwidth", type=float, default=0.05,
                        help="JumpReLU: kernel width of the threshold's gradient")
    parser.add_argument("--initial-threshold", type=float, default=0.01, help="JumpReLU: threshold at initialisation")
    parser.add_argument("--jumprelu-decoder-init-norm", type=float, default=1.0,
                        help="JumpReLU: SAELens's starting decoder-row norm (the product's rows are unit norm)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-match-l0", dest="match_l0", action="store_false",
                        help="skip the extra ReLU-L1 and JumpReLU rows calibrated to SAELens's L0")
    parser.add_argument("--decoder-init-norm", type=float, default=0.1,
                        help="ReLU: starting decoder-row norm of both trainers' SAEs (SAELens's default: 0.1)")
    args = parser.parse_args()
    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.exit(2, f"error: --variants {args.variants!r}: use some of {', '.join(VARIANTS)}\n")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda but no CUDA device is visible; use --device cpu\n")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = synthetic(args.rows + args.held_out, args.d_in).to(args.device)
    acts, held_out = data[: args.rows], data[args.rows:]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(f"{args.rows} rows x {args.d_in} dims, d_sae {args.d_sae}, batch {args.batch}, one epoch, "
          f"torch {torch.__version__}, {where}")
    trainers = [("sae-ception", train_product)] + ([("SAELens", train_saelens)] if saelens_available() else [])
    rows = {(kind, name): timed_runs(train, kind, acts, held_out, args)
            for kind in variants for name, train in trainers}
    bounds = [b for row in rows.values() for b in row["bounds"]]
    print(f"matmul bound: median {statistics.median(bounds):,.0f} rows/s (range {min(bounds):,.0f}-{max(bounds):,.0f}; "
          f"{statistics.median(bounds) * 10 * args.d_in * args.d_sae / 1e9:.0f} GFLOP/s on the 5 GEMMs of a step)")
    print(f"\n{'SAE':<9} {'trainer':<12} {'rows/s':>10} {'vs SAELens':>10} {'of bound':>9} "
          f"{'held-out MSE':>13} {'EV':>7} {'L0':>7}")
    for (kind, name), row in rows.items():
        base = rows.get((kind, "SAELens"))
        ratio = f"{row['speed'] / base['speed']:.2f}x" if base else "n/a"
        q = row["quality"]
        print(f"{kind:<9} {name:<12} {row['speed']:>10,.0f} {ratio:>10} {row['fraction']:>8.0%} "
              f"{q.mse:>13.5f} {q.explained_variance:>7.4f} {q.l0:>7.1f}   "
              f"(runs: {' '.join(f'{f:.0%}' for f in row['fractions'])} of bound)")
    notes = {"relu": "unit-norm decoder (the product's default), L1", "jumprelu": "initial threshold"}
    for kind in (k for k in ("relu", "jumprelu") if k in variants):
        if (kind, "SAELens") not in rows or not args.match_l0:
            continue
        base = rows[(kind, "SAELens")]
        # JumpReLU's L0 varies by a quarter from seed to seed here: it is calibrated on the timed seeds' median
        value, matched = match_l0(kind, acts, held_out, args, base["quality"].l0,
                                  seeds=args.repeats if kind == "jumprelu" else 1)
        q, start = matched["quality"], getattr(args, CALIBRATED[kind])
        print(f"{kind:<9} {'sae-ception':<12} {matched['speed']:>10,.0f} {matched['speed'] / base['speed']:>9.2f}x "
              f"{matched['fraction']:>8.0%} {q.mse:>13.5f} {q.explained_variance:>7.4f} {q.l0:>7.1f}   "
              f"<- {notes[kind]} {value:.3g} (x{value / start:.3g}) calibrated to SAELens's L0"
              + (" (not reached)" if abs(q.l0 - base["quality"].l0) > 0.1 * base["quality"].l0 else ""))
    if not saelens_available():
        print("\nSAELens is not installed here: see the docstring for the benchmark's environment.")


if __name__ == "__main__":
    main()
