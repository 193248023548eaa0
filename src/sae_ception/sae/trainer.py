"""Train an SAE on cached activations: Adam with warmups and clipping, unit-norm decoder, dead-latent tracking.

Each step asks the SAE for its losses and gradients (`loss_and_grads`), so the loop itself is the same for every
variant and every stage. All four standard variants, ReLU, TopK, JumpReLU and BatchTopK, hand-write them
(sae/fast_grads.py; TopK's and BatchTopK's AuxK included while latents are dead); autograd on `forward` remains
for BatchTopK in eval mode, for TopK and BatchTopK batches too small for the hand-written step to pay, and for
the other variants (paper ReLU, the concept autoencoder). Everything per step stays on the device; the host
syncs only on logged steps (every `log_every` steps and the last) and, on an accelerator every
`DEAD_CHECK_EVERY` steps, to learn whether any latent is dead (variants skip dead-latent work while none is).
Training L0 is counted on logged steps only, as a monitor; which latents fired, for dead-latent tracking, is
known exactly at every step.

Divergence stops training with a DivergenceError (one line naming the training and `sae.lr`), so nothing of
it is saved: non-finite losses on a logged step, non-finite weights at the end (NaN weights persist, so the
end catches what the logged steps missed), or a trained SAE whose reconstructions of the training rows are
worse than their mean by a wide margin (`DIVERGED_EXPLAINED_VARIANCE`).

With several processes (batch sizes are global, utils/batching.py) every process draws the same batches and
computes its share of each; in one collective per step the gradients, weighted by each share's rows, are
averaged (so the step is the single-process step up to floating-point order), the processes learn which
latents fired on any of their rows (so all agree on the dead latents) and the batch's mean (for its explained
variance); every process starts from rank 0's initialisation (`start_from_main_process`). What still depends on
the split: BatchTopK keeps the top k x rows of each process's share, not of the whole batch, and TopK's AuxK loss
is normalised by each share's residual, not the batch's.
"""

import math
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from torch import Tensor

from sae_ception.errors import DivergenceError
from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, fit_sample
from sae_ception.utils.batching import Share, num_batches, process_shares, shuffled_batches
from sae_ception.utils.distributed import check_rows_per_process
from sae_ception.utils.io import non_finite_tensor
from sae_ception.utils.progress import progress_bar

# An SAE whose explained variance on its training rows ends below this has diverged: its squared error is
# more than twice the rows' variance about their mean, i.e. far worse than reconstructing every row by the
# mean (EV 0), and than its own initialisation, which is fitted to explain a non-negative share (base.py).
# Healthy trainings, however short, end well above 0; the learning rates that diverge end orders of magnitude
# below (EV -1e8 at sae.lr=10, -1e30 at sae.lr=1e6 on the digits preset).
DIVERGED_EXPLAINED_VARIANCE = -1.0


def dead_window(dead_after_examples: int, rows_per_epoch: int) -> int:
    """Training examples a latent must stay silent for to count as dead: `dead_after_examples`, or one epoch
    when an epoch is shorter (a latent that fired on none of the training rows in a whole epoch is dead,
    however short the run)."""
    return max(1, min(dead_after_examples, rows_per_epoch))


class FiringTracker:
    """Training examples since each latent last fired; a latent silent for `dead_after` examples is dead
    (the trainer uses `dead_window`: `dead_after_examples`, or one epoch when that is shorter)."""

    def __init__(self, d_sae: int, dead_after: int, device: torch.device):
        self.since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.dead_after = dead_after

    def update(self, codes_BF: Tensor, fired_F: Optional[Tensor] = None, rows: Optional[int] = None) -> None:
        """`fired_F`: which latents fired, when the step already knows (saves a pass over the codes); with several
        processes, whether they fired on any process's rows. `rows`: the examples of the step (the global batch;
        default: the rows of `codes_BF`)."""
        if fired_F is None:
            fired_F = (codes_BF.detach() != 0).any(0)
        self.since_fired_F = torch.where(fired_F, 0, self.since_fired_F + (codes_BF.shape[0] if rows is None else rows))

    @property
    def dead_F(self) -> Tensor:
        return self.since_fired_F >= self.dead_after


def _sum_of_squares(t: Tensor) -> Tensor:
    """One fused pass (a dot product): `.pow(2).sum()` is about 10x slower on CPU."""
    flat = t.reshape(-1)
    return torch.dot(flat, flat)


def batch_metrics(out: SAEOutput, with_l0: bool = True) -> dict[str, Tensor]:
    """Loss terms and, `with_l0`, L0 (mean non-zero codes per row) of one batch, as device scalars: each a mean
    over the batch's rows (AuxK's normalisation aside, see sae/topk.py)."""
    metrics = {k: v.detach().float() for k, v in out.losses.items()}
    if not with_l0:
        return metrics
    if out.l0 is not None:
        metrics["l0"] = out.l0.detach()
    else:  # sign/abs/sum: three fast passes (count_nonzero and boolean sums are several times slower on CPU)
        metrics["l0"] = out.codes_BF.detach().sign().abs_().sum() / out.codes_BF.shape[0]
    return metrics


def error_and_spread(out: SAEOutput, x_BD: Tensor, center_D: Optional[Tensor] = None) -> Tensor:
    """[2]: the batch's summed squared reconstruction error and its rows' summed squared distance from `center_D`
    (default: their mean), both in the raw space. A step's explained variance is 1 - error / spread; with several
    processes both are summed over processes, each measuring from the global batch's mean."""
    x_BD = x_BD.float()
    err = out.squared_error if out.squared_error is not None else _sum_of_squares(out.recon.float() - x_BD)
    spread = _sum_of_squares(x_BD - (x_BD.mean(0) if center_D is None else center_D))
    return torch.stack([err.detach().float(), spread])


def explained_variance(error_and_spread_S2: Tensor) -> Tensor:
    """[S]: 1 - error / spread of each row of `error_and_spread` pairs [S, 2] (spread floored at 1e-12)."""
    return 1 - error_and_spread_S2[:, 0] / error_and_spread_S2[:, 1].clamp_min(1e-12)


def set_lr(optimizer, cfg: SAEConfig, step: int) -> float:
    """Linear warmup to cfg.lr over `lr_warmup_steps` (step 0 already gets lr / warmup)."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps > 0 else cfg.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


DEAD_CHECK_EVERY = 10  # steps between host reads of "is any latent dead?" on an accelerator (every step on CPU,
#                        where reading a device value costs no synchronisation)


def make_optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel where this torch and device have it (one pass over all parameters)."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(sae.parameters(), lr=lr)


def optimise(sae: SparseAutoencoder, optimizer, accelerator: Accelerator, cfg: SAEConfig, weight: float = 1.0,
             along: Optional[Tensor] = None) -> Optional[Tensor]:
    """One step on the gradients `loss_and_grads` set, keeping decoder rows on the unit sphere: average
    across processes, project, clip, step, renormalise. With several processes each one's gradients are scaled
    by its share's `weight` (batching.Share) and averaged over processes, so the step follows the gradient of
    the global batch's mean loss; `along` (a float vector, e.g. which latents fired) is averaged in the same
    collective and returned averaged (returned as it is with one process)."""
    params = [p for p in sae.parameters() if p.grad is not None]
    if accelerator.num_processes > 1:  # hand-written gradients bypass DDP's hooks: average them here
        along = _average_over_processes([p.grad for p in params], weight, along, accelerator)
    sae.remove_parallel_decoder_grad_()
    if cfg.grad_clip is not None and cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.normalize_decoder_()
    return along


def _average_over_processes(grads: list[Tensor], weight: float, along: Optional[Tensor],
                            accelerator: Accelerator) -> Optional[Tensor]:
    """Replace each gradient by the mean over processes of `weight` x it, in one collective over one flat
    buffer (with `along` appended, whose mean over processes is returned)."""
    pieces = [g.reshape(-1).float() * weight for g in grads] + ([along.float()] if along is not None else [])
    flat = accelerator.reduce(torch.cat(pieces), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:] if along is not None else None


def _step_over_processes(sae: SparseAutoencoder, optimizer, accelerator: Accelerator, cfg: SAEConfig, out: SAEOutput,
                         x_BD: Tensor, share: Share, batch_rows: int) -> tuple[Tensor, Optional[Tensor]]:
    """`optimise` on this process's `share` (its rows x_BD [b, D]) of a global batch of `batch_rows` rows. Returns
    which latents fired [F] (on any process's rows) and the global batch's mean [D] in the raw space (None with one
    process: the batch is x_BD), both learnt in the gradients' collective; a placeholder row counts for neither."""
    fired_F = out.fired_F if out.fired_F is not None else (out.codes_BF.detach() != 0).any(0)
    if accelerator.num_processes == 1:
        optimise(sae, optimizer, accelerator, cfg)
        return fired_F, None
    counted = float(share.weight > 0)
    along = optimise(sae, optimizer, accelerator, cfg, share.weight,
                     torch.cat([fired_F.float() * counted, x_BD.float().sum(0) * counted]))
    d_sae = fired_F.shape[0]
    return along[:d_sae] > 0, along[d_sae:] * (accelerator.num_processes / batch_rows)


def _mean_over_processes(values: Tensor, accelerator: Accelerator) -> Tensor:
    """The mean over processes of `values` (every process must call it); `values` itself with one process."""
    return accelerator.reduce(values, reduction="mean") if accelerator.num_processes > 1 else values


@torch.no_grad()
def start_from_main_process(sae: SparseAutoencoder) -> None:
    """Copy rank 0's parameters and buffers into every process's `sae` (one broadcast per tensor; every process
    must call it), as DDP does for the classifier: the SAE is not DDP-wrapped, and its steps stay identical
    across processes only if it starts identical. Each process seeds its stage alike, so this changes nothing
    unless some random number was drawn differently (e.g. a process's own dropout stream)."""
    for tensor in [*sae.parameters(), *sae.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


def diverged(cfg: SAEConfig, what: str, how: str) -> DivergenceError:
    """`sae.lr=1e+30: SAE training of cycle 0 diverged at step 12 (mse nan); lower sae.lr`."""
    return DivergenceError(f"sae.lr={cfg.lr:g}: {what} diverged {how}; lower sae.lr")


def _require_finite(values: dict[str, float], cfg: SAEConfig, what: str, step: int) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise diverged(cfg, what, f"at step {step} ({name} {value})")


@torch.no_grad()
def fit_on_training_rows(sae: SparseAutoencoder, acts_ND: Tensor, rows_per_chunk: int = 4096) -> dict:
    """How the trained SAE (as it is: call after `eval()`) reconstructs the training rows of `fit_sample`
    (all, or a fixed-seed sample): {"rows", "mse" (raw space, per element), "explained_variance" (None when the
    rows do not vary), "l0", "dead_fraction" (latents that fire on none of these rows)}, from `sae_quality`."""
    rows_ND = fit_sample(acts_ND)
    quality = sae_quality(sae, rows_ND, batch_size=rows_per_chunk)
    ev = quality["explained_variance"]
    return {"rows": len(rows_ND), "mse": quality["mse"], "explained_variance": None if math.isnan(ev) else ev,
            "l0": quality["l0"], "dead_fraction": quality["dead_fraction"]}


def train_sae(
    sae: SparseAutoencoder,
    acts_ND: Tensor,
    cfg: SAEConfig,
    *,
    accelerator: Accelerator,
    seed: int,
    log_fn: Optional[Callable[[dict, int], None]] = None,
    show_progress: bool = True,
    what: str = "SAE training",
) -> dict:
    """Train `sae` in place on `acts_ND` [N, d_in] (raw activations), in global batches of `cfg.batch_size` rows
    (every process holds all of `acts_ND` and computes its share of each batch). Returns last-epoch means of the
    loss terms, L0 and EV over whole batches (all processes); `dead_fraction` (latents silent for the dead window
    at the end: `dead_window`); `final_fit` (`fit_on_training_rows` of the trained SAE) and `degenerate` (no
    latent of the trained SAE fires on those rows); steps, epochs.

    Raises DivergenceError, one line naming `what` and sae.lr, when the losses of a logged step or the
    final weights are not finite, or the final fit's explained variance is below DIVERGED_EXPLAINED_VARIANCE;
    ConfigError when `cfg.batch_size` is smaller than the number of processes."""
    sae.set_normalization(acts_ND)
    device, generator = accelerator.device, torch.Generator().manual_seed(seed)
    sae = sae.to(device)
    if accelerator.num_processes > 1:
        start_from_main_process(sae)
    optimizer = make_optimizer(sae, cfg.lr)
    n, rank, world = len(acts_ND), accelerator.process_index, accelerator.num_processes
    check_rows_per_process(cfg.batch_size, 1, world, "sae.batch_size")
    tracker = FiringTracker(sae.d_sae, dead_window(cfg.dead_after_examples, n), device)
    steps_per_epoch = num_batches(n, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    bar = progress_bar(total_steps, "sae", show_progress and accelerator.is_main_process)
    step, epoch_sums, epoch_counts = 0, {}, {}
    # reused: no per-step allocation (a process computes at most ceil(batch_size / world) rows of a batch)
    batch_buffer = acts_ND.new_empty((min(-(-cfg.batch_size // world), n), acts_ND.shape[1]))
    sae.train()
    any_dead, check_every = True, 1 if device.type == "cpu" else DEAD_CHECK_EVERY
    for epoch in range(cfg.epochs):
        epoch_sums, epoch_counts = {}, {}  # L0 is measured on logged steps only: its own count
        error_spread_S2 = torch.zeros(steps_per_epoch, 2, device=device)  # per step, for the epoch's mean EV
        for position, batch in enumerate(shuffled_batches(n, cfg.batch_size, generator)):
            share = process_shares(batch, rank, world)[0]
            x_BD = torch.index_select(acts_ND, 0, share.rows.to(acts_ND.device), out=batch_buffer[: len(share.rows)])
            x_BD = x_BD.to(device, non_blocking=True).float()
            lr = set_lr(optimizer, cfg, step)
            if step % check_every == 0:
                any_dead = bool(tracker.dead_F.any())
            logged_step = (step + 1) % cfg.log_every == 0 or step + 1 == total_steps
            out = sae.loss_and_grads(x_BD, TrainingState(step=step, dead_F=tracker.dead_F, any_dead=any_dead,
                                                         measure_l0=logged_step))
            fired_F, center_D = _step_over_processes(sae, optimizer, accelerator, cfg, out, x_BD, share, len(batch))
            tracker.update(out.codes_BF, fired_F, rows=len(batch))
            error_spread_S2[position] = error_and_spread(out, x_BD, center_D) if share.weight > 0 else 0.0
            metrics = batch_metrics(out, with_l0=logged_step)
            if world > 1:  # this process's part of the batch means (their mean over processes: the batch's)
                metrics = {k: v * share.weight for k, v in metrics.items()}
            for key, value in metrics.items():  # a step without L0 leaves its sum and count as they are
                epoch_sums[key] = epoch_sums.get(key, 0) + value
                epoch_counts[key] = epoch_counts.get(key, 0) + 1
            step += 1
            bar.update()
            if logged_step:  # the only host sync in the loop: one transfer of this step's numbers, averaged over
                #              processes (so a NaN anywhere stops every process at the same step)
                values = _mean_over_processes(torch.cat([torch.stack(list(metrics.values())),
                                                         error_spread_S2[position]]), accelerator).tolist()
                ev = float(explained_variance(torch.tensor([values[-2:]])))
                logged = dict(zip(metrics, values[:-2])) | {"explained_variance": ev,
                                                            "dead_fraction": tracker.dead_F.float().mean().item()}
                _require_finite(logged, cfg, what, step)
                bar.set_postfix(mse=f"{logged['mse']:.4g}", l0=f"{logged['l0']:.1f}")
                if log_fn is not None:
                    log_fn({**logged, "lr": lr, "epoch": epoch}, step)
    bar.close()
    bad = non_finite_tensor(sae.state_dict())
    if bad is not None:
        raise diverged(cfg, what, f"by step {step} ({bad} holds NaN or inf)")
    sae.finish_training_(acts_ND)
    sae.eval()
    final_fit = fit_on_training_rows(sae, acts_ND)
    ev = final_fit["explained_variance"]
    if not math.isfinite(final_fit["mse"]):
        raise diverged(cfg, what, f"(reconstruction error {final_fit['mse']} on the training rows)")
    if ev is not None and ev < DIVERGED_EXPLAINED_VARIANCE:
        raise diverged(cfg, what, f"(explained variance {ev:.3g} on the training rows, below "
                                  f"{DIVERGED_EXPLAINED_VARIANCE:g}: reconstructions far worse than the rows' mean)")
    sums, error_spread = torch.stack(list(epoch_sums.values())), error_spread_S2
    if world > 1:  # one collective: the last epoch's sums and per-step errors and spreads, over every process
        flat = _mean_over_processes(torch.cat([sums, error_spread_S2.reshape(-1)]), accelerator)
        sums, error_spread = flat[: len(sums)], flat[len(sums):].view_as(error_spread_S2)
    stats = {k: (v / epoch_counts[k]).item() for k, v in zip(epoch_sums, sums)}
    stats = {**{k: v for k, v in stats.items() if k != "l0"},
             "explained_variance": explained_variance(error_spread).mean().item(),
             **({"l0": stats["l0"]} if "l0" in stats else {})}
    return {**stats, "dead_fraction": tracker.dead_F.float().mean().item(), "dead_window": tracker.dead_after,
            "final_fit": final_fit, "degenerate": final_fit["dead_fraction"] == 1.0, "steps": step,
            "epochs": cfg.epochs}
