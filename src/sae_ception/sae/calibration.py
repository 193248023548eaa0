"""Find the sparsity-penalty coefficient that gives a target mean L0 (`sae.target_l0`).

The search trains SAEs on a seeded subset of the training rows (`sae.calibration_fraction`), for as
many optimiser steps as the full training takes (more epochs over fewer rows: L0 after a short
training depends on the number of steps), and measures mean L0 on validation rows. L0 falls as the
coefficient grows, so the search brackets the target by factors of 4 and then interpolates in
log-coefficient / log-L0. The full training then uses the coefficient found.

Every trial trains with `sae.lr`, as the full training does. A trial that diverges (DivergenceError from
the trainer: non-finite losses or weights, or reconstructions far worse than the mean) stops the search with
that one line, naming the trial's coefficient: the penalty cannot make a learning rate stable (Adam's steps
are about `sae.lr` whatever the loss's scale), so the full training would diverge too. A trial whose
latents all die (a large coefficient) is no divergence: it is a point with L0 0, and the search moves on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Callable

import torch
from accelerate import Accelerator

from sae_ception.sae.base import SAEConfig, build_sae
from sae_ception.sae.trainer import fit_on_training_rows, train_sae

log = logging.getLogger(__name__)

LOG_RANGE = (math.log(1e-8), math.log(1e4))  # coefficients the search may try


@torch.no_grad()
def mean_l0(sae, acts_ND: torch.Tensor, batch_size: int = 8192) -> float:
    device = sae.W_dec_FD.device
    total = sum(float((sae.encode(chunk.to(device).float()) != 0).sum()) for chunk in acts_ND.split(batch_size))
    return total / max(len(acts_ND), 1)


def calibrate_penalty(cfg: SAEConfig, train_ND: torch.Tensor, val_ND: torch.Tensor, *, accelerator: Accelerator,
                      seed: int, max_trials: int = 10, tolerance: float = 0.05,
                      what: str = "SAE training") -> tuple[SAEConfig, dict]:
    """(cfg with the calibrated coefficient, a record of the search). `tolerance`: stop when the subset's
    validation L0 is within this relative distance of the target. Raises DivergenceError when a trial
    diverges (`what` names the training in that one line)."""
    setting, target = cfg.penalty_setting, cfg.target_l0
    generator = torch.Generator().manual_seed(seed)
    count = max(cfg.batch_size, int(len(train_ND) * cfg.calibration_fraction))
    subset = train_ND[torch.randperm(len(train_ND), generator=generator)[:count].sort().values]
    epochs = max(1, round(cfg.epochs * len(train_ND) / count))  # the full run's steps
    points: list[tuple[float, float]] = []  # (log coefficient, log validation L0) of every trial

    def trial(log_coefficient: float) -> tuple[float, float]:
        log_coefficient = min(max(log_coefficient, LOG_RANGE[0]), LOG_RANGE[1])
        trial_cfg = replace(cfg, epochs=epochs, **{setting: math.exp(log_coefficient)})
        sae = build_sae(trial_cfg, train_ND.shape[1])
        train_sae(sae, subset, trial_cfg, accelerator=accelerator, seed=seed, show_progress=False,
                  what=f"{what} (calibration trial {setting}={math.exp(log_coefficient):.3g})")
        l0 = mean_l0(sae, val_ND)
        log.info("calibration: %s=%.4g -> validation L0 %.2f (target %g)", setting, math.exp(log_coefficient), l0, target)
        points.append((log_coefficient, _log(l0)))
        return points[-1]

    goal = _log(target)
    miss = lambda point: abs(point[1] - goal)  # noqa: E731
    searching = lambda: len(points) < max_trials and min(map(miss, points)) > math.log1p(tolerance)  # noqa: E731
    low = trial(math.log(getattr(cfg, setting)) if getattr(cfg, setting) > 0 else math.log(1e-3))
    high = None
    step = math.log(4.0) if low[1] > goal else -math.log(4.0)  # a larger coefficient lowers L0
    while high is None and searching() and LOG_RANGE[0] < low[0] + step < LOG_RANGE[1]:  # bracket the target
        point = trial(low[0] + step)
        high, low = (point, low) if (point[1] - goal) * (low[1] - goal) <= 0 else (None, point)
    while high is not None and searching():  # interpolate inside the bracket
        x = low[0] + (goal - low[1]) * (high[0] - low[0]) / (high[1] - low[1]) if high[1] != low[1] else (low[0] + high[0]) / 2
        point = trial(x)
        low, high = (point, high) if (point[1] - goal) * (low[1] - goal) > 0 else (low, point)
    best = min(points, key=miss)
    if high is None and miss(best) > math.log1p(tolerance):
        log.warning("calibration: no %s in [%g, %g] reached validation L0 %g (closest: %.2f); using the closest",
                    setting, math.exp(LOG_RANGE[0]), math.exp(LOG_RANGE[1]), target, math.exp(best[1]))
    coefficient = math.exp(best[0])
    trials = [{setting: math.exp(x), "val_l0": math.exp(y)} for x, y in points]
    return replace(cfg, **{setting: coefficient}), {"setting": setting, "target_l0": target, "coefficient": coefficient,
                                                    "subset_rows": count, "trials": trials}


def _log(l0: float) -> float:
    return math.log(max(l0, 1e-3))


def _slope(trials: list[dict], setting: str) -> float:
    """d log L0 / d log coefficient: the shallowest falling segment between neighbouring trials (so the
    correction it implies is the cautious one), or -1 when no segment falls."""
    points = sorted((math.log(t[setting]), _log(t["val_l0"])) for t in trials)
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:]) if b[0] != a[0] and b[1] < a[1]]
    return max(slopes) if slopes else -1.0


def train_calibrated(cfg: SAEConfig, train_ND: torch.Tensor, val_ND: torch.Tensor, *, accelerator: Accelerator,
                     seed: int, log_fn: Callable | None = None, show_progress: bool = False, tolerance: float = 0.1,
                     what: str = "SAE training"):
    """An SAE trained on all rows with its penalty calibrated to `cfg.target_l0`: the subset search, the
    full training, and, when the full run's validation L0 misses the target by more than `tolerance`,
    one correction (JumpReLU: its thresholds are re-tuned on the validation rows; others: one more full
    training with the coefficient moved along the search's log-log slope). Returns (sae, record).
    Raises DivergenceError (one line naming `what`) when a trial or a full training diverges."""
    calibrated, record = calibrate_penalty(cfg, train_ND, val_ND, accelerator=accelerator, seed=seed, what=what)

    def full(run_cfg: SAEConfig):
        sae = build_sae(run_cfg, train_ND.shape[1])
        stats = train_sae(sae, train_ND, run_cfg, accelerator=accelerator, seed=seed, log_fn=log_fn,
                          show_progress=show_progress, what=what)
        return sae, stats, mean_l0(sae, val_ND)

    sae, stats, l0 = full(calibrated)
    record["full_run_val_l0"] = l0
    if abs(l0 - cfg.target_l0) > tolerance * cfg.target_l0:
        if hasattr(sae, "retune_thresholds"):
            l0 = sae.retune_thresholds(val_ND.to(sae.W_dec_FD.device).float(), cfg.target_l0)
            record["correction"] = "thresholds re-tuned on validation rows"
            final_fit = fit_on_training_rows(sae, train_ND)  # of the SAE as re-tuned
            stats = {**stats, "final_fit": final_fit, "degenerate": final_fit["dead_fraction"] == 1.0}
        else:
            setting = record["setting"]
            factor = math.exp((_log(l0) - _log(cfg.target_l0)) / -_slope(record["trials"], setting))
            factor = min(max(factor, 1 / 16), 16.0)
            coefficient = min(max(getattr(calibrated, setting) * factor, math.exp(LOG_RANGE[0])), math.exp(LOG_RANGE[1]))
            calibrated = replace(calibrated, **{setting: coefficient})
            sae, stats, l0 = full(calibrated)
            record["correction"] = f"one more full training with {setting} x {factor:.3g}"
            record["coefficient"] = getattr(calibrated, setting)
    record["achieved_val_l0"] = l0
    log.info("calibration: %s=%.4g gives validation L0 %.2f (target %g)", record["setting"], record["coefficient"],
             l0, cfg.target_l0)
    return sae, {**stats, "calibration": record}
