"""Training a classifier on some classes only: models A and B, the joint ceiling, with the product's trainer."""

from __future__ import annotations

import logging

from sae_ception.data import Split
from sae_ception.models import Classifier, ModelConfig, build_model
from sae_ception.training.classifier import ClassifierSchedule, evaluate_classifier, train_classifier
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)


def new_classifier(run, model_cfg: ModelConfig) -> Classifier:
    """A fresh classifier with one output per dataset class (a model learning classes 0-3 still has 10 outputs,
    so another model's class rows can be copied into it)."""
    splits = run.splits
    return build_model(model_cfg, input_dim=splits.input_dim, num_classes=splits.num_classes)


def train_on_classes(run, model_cfg: ModelConfig, train: Split, val: Split, seed: int, stage: str,
                     setting: str) -> tuple[Classifier, dict]:
    """A classifier trained from a fresh initialisation (seeded by `seed`) on `train` with `model_cfg`'s schedule,
    keeping the best epoch on `val` (the same classes) when model_cfg.keep_best. Returns (model on the CPU,
    {"history", "kept_epoch", "steps", "examples_seen", "val": {"accuracy", "loss"}}). `setting`: the config
    group named in a divergence error (e.g. model_a)."""
    generator = seed_everything(seed)
    model = new_classifier(run, model_cfg)
    schedule = ClassifierSchedule.from_model_config(model_cfg, model_cfg.epochs, model_cfg.lr, model_cfg.keep_best)
    log.info("%s: training %s on %d images of classes %s for %d epochs", stage, model_cfg.name, len(train.y),
             sorted(set(train.y.tolist())), schedule.epochs)
    cfg = run.cfg
    model, info = train_classifier(
        model, train, val, schedule, accelerator=run.accelerator, generator=generator, stage=stage,
        log_fn=run.log_fn(stage), show_progress=cfg.progress, eval_batch_size=cfg.eval_batch_size,
        what=f"{stage} training", lr_setting=f"{setting}.lr",
    )
    info["val"] = evaluate_classifier(model, val, run.accelerator, cfg.eval_batch_size) if len(val.y) else {}
    return model.cpu(), info
