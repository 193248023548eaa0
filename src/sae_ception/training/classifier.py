"""One loop trains the classifier for the baseline (task loss) and for auxiliary retraining (task + lambda * aux).

The host syncs once per epoch (the epoch's mean losses and the validation pass); a non-finite number there,
a non-finite weight when training ends, or a kept epoch whose mean task loss is more than DIVERGED_LOSS_FACTOR
times that of guessing uniformly stops the training with a DivergenceError naming it and the learning-rate
setting to lower, before anything is saved."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from sae_ception.data import Split
from sae_ception.errors import ConfigError, DivergenceError
from transformers import get_scheduler

from sae_ception.models import Classifier
from sae_ception.training.auxiliary_loss import aux_loss_fn
from sae_ception.evaluation.performance import accuracy_and_loss
from sae_ception.utils.batching import (Share, example_lengths, inference_batches, num_batches, process_shares,
                                       shuffled_batches, take, to_device)
from sae_ception.utils.distributed import check_rows_per_process
from sae_ception.utils.io import non_finite_tensor
from sae_ception.utils.progress import progress_bar
from sae_ception.utils.seeding import rejoin_main_stream, seed_process_stream

log = logging.getLogger(__name__)


@dataclass
class ClassifierSchedule:
    epochs: int
    batch_size: int  # examples per optimiser step, over all processes (global: utils/batching.py)
    lr: float
    weight_decay: float = 0.0
    keep_best: bool = True
    lr_schedule: str = "constant"  # constant | linear | cosine (transformers' schedulers), after warmup
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = None
    gradient_accumulation_steps: int = 1
    group_by_length: bool = False  # text: batch examples of similar length together (less padding)

    @classmethod
    def from_model_config(cls, model_cfg, epochs: int, lr: float, keep_best: bool) -> "ClassifierSchedule":
        return cls(epochs, model_cfg.batch_size, lr, model_cfg.weight_decay, keep_best, model_cfg.lr_schedule,
                   model_cfg.warmup_ratio, model_cfg.max_grad_norm, model_cfg.gradient_accumulation_steps,
                   model_cfg.group_by_length)


# A training whose kept epoch ends with a mean task loss above this many times ln(classes) — the loss of guessing
# uniformly — has diverged even with finite numbers (cycle.lr=1e6 ended at 5.9e16): a training that learns, or
# overfits, ends below ln(classes); one that collapses to a constant guess ends near it (a legitimate outcome,
# e.g. on shuffled labels), never ten times above it.
DIVERGED_LOSS_FACTOR = 10.0


def lr_setting_of(cfg, model_cycle: int) -> tuple[str, float]:
    """The learning-rate setting (name, value) of the training that makes model N: `model.lr` for the baseline
    (N = 0), `cycle.lr` for auxiliary retraining (N >= 1), or `model.lr` when `cycle.lr` is null or the retraining
    starts from scratch (`cycle.init=scratch` uses the baseline's schedule)."""
    if model_cycle > 0 and cfg.cycle.lr and getattr(cfg.cycle, "init", "continue") != "scratch":
        return "cycle.lr", cfg.cycle.lr
    return "model.lr", cfg.model.lr


@dataclass
class AuxiliaryTargets:
    """Sharpened target activation for every training example (row i belongs to train example i), the weight
    lambda of the auxiliary term, its objective (`cycle.aux_loss`, see training/auxiliary_loss.py) and the
    training centre [D] that `cosine_centered` measures from (None: the origin)."""

    targets_ND: torch.Tensor
    weight: float
    loss: str = "cosine"
    center_D: Optional[torch.Tensor] = None

    def center(self, device) -> torch.Tensor:
        if self.center_D is None:
            return torch.zeros(self.targets_ND.shape[1], device=device)
        return self.center_D.to(device)


@torch.no_grad()
def objective_terms(model: Classifier, train: Split, aux: AuxiliaryTargets, accelerator: Accelerator,
                    batch_size: int) -> dict[str, float]:
    """The two terms of the auxiliary training objective for `model` over the whole training split, in eval mode:
    mean task loss (cross-entropy, nats), mean auxiliary loss, the weighted auxiliary term lambda * aux, and its
    ratio to the task loss (how much the auxiliary signal weighs against the task; NaN when the task loss is 0).
    Measured before and after auxiliary training, so a reader sees whether the objective had anything to do."""
    device = accelerator.device
    raw_model = accelerator.unwrap_model(model)
    raw_model.eval()
    loss_fn, center_D = aux_loss_fn(aux.loss), aux.center(device)
    task_sum, aux_sum, n = 0.0, 0.0, len(train.y)
    if n == 0:
        return weighted_terms(math.nan, math.nan, aux.weight)
    for rows, batch in inference_batches(train.x, batch_size):
        with raw_model.capture_target() as captured, accelerator.autocast():
            logits = raw_model(to_device(batch, device))
            task_sum += float(F.cross_entropy(logits.float(), train.y[rows].to(device), reduction="sum"))
            aux_sum += float(loss_fn(captured.acts.float(), aux.targets_ND[rows].to(device), center_D)) * len(rows)
    return weighted_terms(task_sum / n, aux_sum / n, aux.weight)


def weighted_terms(task_loss: float, aux_loss: float, weight: float) -> dict[str, float]:
    """`objective_terms` of a model whose mean task and auxiliary losses are known, under auxiliary weight `weight`."""
    weighted = weight * aux_loss
    return {"task_loss": task_loss, "aux_loss": aux_loss, "weighted_aux_loss": weighted,
            "aux_to_task_ratio": weighted / task_loss if task_loss > 0 else math.nan}


def trainable_names(model: Classifier, prefixes: list[str]) -> set[str]:
    """`["all"]` names every parameter; `["from_target"]` all but the embeddings and the blocks below the
    target layer (the reference's auxiliary setting); else those inside the named modules
    (`blocks.0` is not `blocks.10`)."""
    names = [name for name, _ in model.named_parameters()]
    if list(prefixes) == ["all"]:
        return set(names)
    if list(prefixes) == ["from_target"]:
        return set(names) - model.names_below_target()

    def inside(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    unmatched = [p for p in prefixes if not any(inside(name, p) for name in names)]
    if unmatched:
        modules = sorted({name.rsplit(".", 1)[0] for name in names})
        shown = modules if len(modules) <= 12 else modules[:12] + ["..."]
        raise ConfigError(f"cycle.trainable={list(prefixes)}: {unmatched} match no parameter; valid: all, from_target, "
                          f"or module names ({', '.join(shown)})")
    return {name for name in names if any(inside(name, p) for p in prefixes)}


def select_trainable(model: Classifier, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """Freeze everything outside `prefixes`; return the parameters left to train."""
    chosen = trainable_names(model, prefixes)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return [param for name, param in model.named_parameters() if name in chosen]


def outside_forward(model: Classifier, x, device, autocast: Callable = contextlib.nullcontext) -> list[str]:
    """Names of the trainable parameters (`requires_grad`) that no gradient of the logits reaches: parameters off
    the forward path, such as a pretrained encoder's pooler (BERT/MiniLM's `backbone.pooler.*`, computed by the
    backbone but never read by the head). `x`: a batch of inputs (one row suffices, [1, ...] or a dict of token
    tensors), fed in eval mode so no random number is drawn (no dropout); the model's mode is restored. One
    forward and one backward pass; the parameters' `.grad` are left as they were. Every loss the classifier
    trains on (task and auxiliary) is computed from the logits' graph, so these parameters never get a gradient:
    one process never changes them, and DDP, which expects a gradient for every parameter it reduces, would
    stop at the second step."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not named:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), autocast():
            logits = model(to_device(x, device))
        if not logits.requires_grad:
            return [name for name, _ in named]
        grads = torch.autograd.grad(logits.float().sum(), [param for _, param in named], allow_unused=True)
    finally:
        model.train(was_training)
    return [name for (name, _), grad in zip(named, grads) if grad is None]


@torch.no_grad()
def evaluate_classifier(model: Classifier, split: Split, accelerator: Accelerator, batch_size: int) -> dict[str, float]:
    if len(split.y) == 0:
        return {"accuracy": 0.0, "loss": 0.0}
    logits = model.logits_of(split.x, batch_size, accelerator.device, accelerator.autocast)
    return accuracy_and_loss(logits, split.y)


def _forward_losses(model, raw_model: Classifier, x, y, idx, targets_ND, center_D, aux: Optional[AuxiliaryTargets],
                    device, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Task loss (and the auxiliary loss against the examples' sharpened targets) of one micro-batch."""
    with raw_model.capture_target() as captured, accelerator.autocast():
        logits = model(to_device(x, device))
        task_loss = F.cross_entropy(logits.float(), y.to(device))
        if aux is None:
            return {"task_loss": task_loss, "loss": task_loss}
        aux_loss = aux_loss_fn(aux.loss)(captured.acts.float(), targets_ND[idx.to(device)], center_D)
        return {"task_loss": task_loss, "aux_loss": aux_loss, "loss": task_loss + aux.weight * aux_loss}


def train_classifier(
    model: Classifier,
    train: Split,
    val: Split,
    schedule: ClassifierSchedule,
    *,
    accelerator: Accelerator,
    generator: torch.Generator,
    stage: str,
    aux: Optional[AuxiliaryTargets] = None,
    trainable: tuple[str, ...] = ("all",),
    log_fn: Optional[Callable[[dict, int], None]] = None,
    show_progress: bool = True,
    eval_batch_size: int = 1024,
    what: Optional[str] = None,
    lr_setting: str = "model.lr",
) -> tuple[Classifier, dict]:
    """AdamW over the chosen parameters, with LR warmup and decay, gradient accumulation and clipping;
    returns the best-by-validation (or last) model and a history.

    `schedule.batch_size` is global: every process draws the same batches and computes its share of each
    (utils/batching.py), so the steps are those of one process up to floating-point order.

    Raises DivergenceError, one line naming `what` (default: "<stage> training"), the epoch and `lr_setting`
    (the setting that gave `schedule.lr`), when an epoch's mean training losses or its validation loss are
    not finite, or a weight is not finite at the end; ConfigError when a (micro-)batch has fewer rows than
    there are processes.

    Parameters off the forward path (`outside_forward`, e.g. a pretrained encoder's pooler) are not trained,
    with one process or several: no loss reaches them, so one process leaves them unchanged anyway, and DDP
    wraps only parameters that get a gradient at every step. Dropout: with several processes each process
    draws its own masks for its own rows (`seed_process_stream`): rank 0 continues the stream one process would
    use, the others are reseeded from `generator`'s seed and their rank; after training every process takes
    rank 0's stream again. Runs with N processes and dropout are therefore equal to one process in
    distribution, not in value."""
    what = what or f"{stage} training"
    rank, world = accelerator.process_index, accelerator.num_processes
    check_rows_per_process(schedule.batch_size, schedule.gradient_accumulation_steps, world, "model.batch_size")
    params = select_trainable(model, list(trainable))
    if len(train.y):
        model = model.to(accelerator.device)  # as `prepare` would: the probe runs where training runs
        unused = set(outside_forward(model, take(train.x, torch.arange(1)), accelerator.device, accelerator.autocast))
        if unused:
            for name, param in model.named_parameters():
                if name in unused:
                    param.requires_grad_(False)
            params = [param for param in params if param.requires_grad]
            shown = sorted(unused)
            log.info("%s: %d parameter tensors receive no gradient from the classifier's output and are not trained "
                     "(%s)", stage, len(shown), ", ".join(shown if len(shown) <= 6 else shown[:6] + ["..."]))
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    n, steps_per_epoch = len(train.y), num_batches(len(train.y), schedule.batch_size)
    total_steps = max(1, steps_per_epoch * schedule.epochs)
    scheduler = get_scheduler(schedule.lr_schedule, optimizer, num_warmup_steps=int(schedule.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    seed_process_stream(generator.initial_seed(), rank, world)  # dropout: each process its own masks
    device = accelerator.device
    targets_ND = aux.targets_ND.to(device) if aux is not None else None
    center_D = aux.center(device) if aux is not None else None
    micro_size = schedule.batch_size // schedule.gradient_accumulation_steps

    keep_best = schedule.keep_best and len(val.y) > 0  # with no validation data, keep the last epoch
    best = {"val_accuracy": -1.0, "epoch": -1, "state": None}
    history: list[dict] = []
    bar = progress_bar(schedule.epochs, stage, show_progress and accelerator.is_main_process, unit="epochs")
    step = 0
    for epoch in range(schedule.epochs):
        model.train()
        epoch_sums: dict[str, torch.Tensor] = {}  # this process's parts of the step means; one host sync per epoch
        for idx in shuffled_batches(n, schedule.batch_size, generator,
                                    lengths=example_lengths(train.x) if schedule.group_by_length else None):
            losses = _step(model, raw_model, train, process_shares(idx, rank, world, micro_size), targets_ND,
                           center_D, aux, accelerator)
            if schedule.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, schedule.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_sums = {k: epoch_sums.get(k, 0.0) + v for k, v in losses.items() if k != "loss"}
            logged_step = step % 10 == 0 or step == steps_per_epoch * schedule.epochs
            if logged_step and (log_fn is not None or world > 1):  # with several processes, every one reduces
                logged = _over_processes(losses, accelerator)
                if log_fn is not None:
                    log_fn(logged | {"epoch": epoch}, step)
        val_metrics = evaluate_classifier(raw_model, val, accelerator, eval_batch_size)
        train_means = _epoch_means(epoch_sums, steps_per_epoch, accelerator)
        _require_finite({**train_means, "val_loss": val_metrics["loss"]}, what, lr_setting, schedule.lr,
                        f"in epoch {epoch + 1} of {schedule.epochs}")
        history.append({"epoch": epoch, **train_means, **{f"val_{k}": v for k, v in val_metrics.items()}})
        bar.set_postfix(val_acc=f"{val_metrics['accuracy']:.4f}")
        bar.update()
        if log_fn is not None:
            log_fn({f"val_{k}": v for k, v in val_metrics.items()} | {"epoch": epoch}, step)
        if keep_best and val_metrics["accuracy"] > best["val_accuracy"]:
            best = {"val_accuracy": val_metrics["accuracy"], "epoch": epoch, "state": {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}}
    bar.close()
    if world > 1:  # every process continues with rank 0's stream (a collective: every process reaches it)
        rejoin_main_stream(accelerator)

    model = accelerator.unwrap_model(model)
    bad = non_finite_tensor(dict(model.named_parameters()))
    if bad is not None:
        raise _diverged(what, lr_setting, schedule.lr, f"by the end ({bad} holds NaN or inf)")
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    for param in model.parameters():
        param.requires_grad_(True)
    kept_epoch = best["epoch"] if best["state"] is not None else schedule.epochs - 1
    kept_loss, chance_loss = history[kept_epoch].get("train_task_loss", 0.0), math.log(max(2, model.num_classes))
    if kept_loss > DIVERGED_LOSS_FACTOR * chance_loss:
        raise _diverged(what, lr_setting, schedule.lr,
                        f"(the kept epoch {kept_epoch + 1}'s mean task loss is {kept_loss:.3g}, over "
                        f"{DIVERGED_LOSS_FACTOR:g} x ln(classes) = {DIVERGED_LOSS_FACTOR * chance_loss:.3g}: far worse "
                        "than guessing)")
    trend = ", ".join(
        f"{key} {history[0][key]:.4f} -> {history[-1][key]:.4f}" for key in ("train_task_loss", "train_aux_loss") if history and key in history[0]
    )
    log.info("%s: kept epoch %d of %d%s; %s", stage, kept_epoch + 1, schedule.epochs,
             " (best validation accuracy)" if best["state"] is not None else "", trend)
    return model, {"history": history, "kept_epoch": kept_epoch, "steps": step, "examples_seen": schedule.epochs * n}


def _step(model, raw_model: Classifier, train: Split, shares: list[Share], targets_ND, center_D,
          aux: Optional[AuxiliaryTargets], accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Forward and backward over this process's shares of one global batch (one per micro-batch), leaving the
    gradient of the global batch's mean loss in `.grad` once DDP has averaged it over processes: each share's
    mean loss is weighted by `share.weight / world` of the step (its rows' part of the batch). Gradients are
    synchronised on the last share only. Returns this process's part of each loss's batch mean (device scalars);
    the sum of the parts over processes is the mean over the global batch."""
    world, losses = accelerator.num_processes, {}
    for position, share in enumerate(shares):
        syncing = position == len(shares) - 1
        with (contextlib.nullcontext() if syncing else accelerator.no_sync(model)):
            micro_losses = _forward_losses(model, raw_model, take(train.x, share.rows), train.y[share.rows],
                                           share.rows, targets_ND, center_D, aux, accelerator.device, accelerator)
            accelerator.backward(micro_losses["loss"] * share.weight)
        losses = {k: losses.get(k, 0.0) + v.detach() * (share.weight / world) for k, v in micro_losses.items()}
    return losses


def _over_processes(parts: dict[str, torch.Tensor], accelerator: Accelerator) -> dict[str, float]:
    """Sum each value over processes (one collective; every process must call it) and bring it to the host."""
    values = torch.stack(list(parts.values()))
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="sum")
    return dict(zip(parts, values.tolist()))


def _epoch_means(epoch_sums: dict[str, torch.Tensor], steps: int, accelerator: Accelerator) -> dict[str, float]:
    """`train_<loss>`: the epoch's mean of each loss over its steps, each step's the mean over the global batch
    (one host sync, on every process), so a NaN on any process stops every process in the same epoch."""
    if not epoch_sums:
        return {}
    return {f"train_{k}": v / steps for k, v in _over_processes(epoch_sums, accelerator).items()}


def _diverged(what: str, lr_setting: str, lr: float, how: str) -> DivergenceError:
    return DivergenceError(f"{lr_setting}={lr:g}: {what} diverged {how}; lower {lr_setting}")


def _require_finite(values: dict[str, float], what: str, lr_setting: str, lr: float, when: str) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise _diverged(what, lr_setting, lr, f"{when} ({name} {value})")
