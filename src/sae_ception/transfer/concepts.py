"""Concept spaces: each model's SAE on its penultimate features (run artifacts shared by every SAE-based method),
and what the methods read from them (codes, class centroids).

The SAEs are the product's own (`sae.type`, any registered type; `sae=concept_autoencoder` for the reference's
small two-layer autoencoder), trained by the product's trainer (sae/trainer.py) once per run, as
`checkpoints/sae_a` and `checkpoints/sae_b`, on the training images each model learned from:
- A's SAE: every training image of `concept.classes_a` (or the first `concept.sae_images_per_class` of each);
- B's SAE: those of B's other classes, and of the target class only the run's k (`concept.target_images`) target
  images: the same k every method is given (TransferContext.target_images), so an SAE-based method's budget
  holds the same k target images as finetune_head's.
A method that reads them (`TransferContext.concept_saes`) has these images and the SAEs' optimiser steps counted
into its budget.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from sae_ception.errors import ConfigError
from sae_ception.sae import SparseAutoencoder, build_sae, load_sae, train_sae
from sae_ception.sae.base import frozen
from sae_ception.transfer.data import TransferData, class_order
from sae_ception.transfer.layers import penultimate
from sae_ception.utils.digest import state_digest
from sae_ception.utils.io import META_FILE, checkpoint_exists, read_json

log = logging.getLogger(__name__)


@dataclass
class SAEImages:
    """Which training images one model's SAE is trained on: every image (or the first `per_class`, in the run's
    fixed order) of `classes`, and the first `target_images` of the target class (0 for A)."""

    classes: list[int]
    per_class: int | None
    target_images: int = 0

    def indices(self, data: TransferData, sample_seed: int) -> torch.Tensor:
        """Positions in the training split, ascending."""
        parts = [data.indices("train", c) if self.per_class is None else class_order(data, c, sample_seed)[:self.per_class]
                 for c in self.classes]
        if self.target_images:
            parts.append(class_order(data, data.concept.target, sample_seed)[:self.target_images])
        return torch.cat(parts).sort().values

    def as_dict(self) -> dict:
        return {"classes": list(self.classes), "per_class": self.per_class, "target_images": self.target_images}


def sae_images(concept, which: str) -> SAEImages:
    """The images model `which`'s SAE trains on (module docstring)."""
    if which == "a":
        return SAEImages(list(concept.classes_a), concept.sae_images_per_class)
    others = [c for c in concept.classes_b if c != concept.target]
    return SAEImages(others, concept.sae_images_per_class, concept.target_images)


@dataclass
class ConceptSAEs:
    """Both models' SAEs (frozen, eval mode, CPU), with what training them used."""

    sae_a: SparseAutoencoder
    sae_b: SparseAutoencoder
    images: dict = field(default_factory=dict)  # "a"/"b" -> SAEImages
    steps: dict = field(default_factory=dict)  # "a"/"b" -> optimiser steps of its training
    warnings: list = field(default_factory=list)  # e.g. an SAE none of whose latents fires


@torch.no_grad()
def encode(model, sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Codes (N, d_sae) of `model`'s penultimate features of inputs x (N, D), float32 on the CPU."""
    feats = penultimate(model, x, batch_size)
    device = next(sae.parameters()).device
    return torch.cat([sae.encode(chunk.to(device)).float().cpu() for chunk in feats.split(batch_size)]) \
        if len(feats) else torch.zeros(0, sae.d_sae)


def centroids(codes_NC: torch.Tensor, labels_N: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Mean code of each class, in `classes` order (len(classes), C). ValueError for a class with no row."""
    rows = []
    for cls in classes:
        mask = labels_N == cls
        if not bool(mask.any()):
            raise ValueError(f"centroids: no code of class {cls}")
        rows.append(codes_NC[mask].mean(0))
    return torch.stack(rows)


def _expected(cfg, which: str, model) -> dict:
    """What an SAE of model `which` depends on: its images, its settings, and the model's weights (a model trained
    again, e.g. after its checkpoint was deleted, has other features)."""
    d_in = model.blocks[-1][0].out_features
    return {"images": sae_images(cfg.concept, which).as_dict(), "d_in": d_in, "d_sae": cfg.sae.width(d_in),
            "sae": asdict(cfg.sae), "model": state_digest(model)}


def check_saved_saes(run) -> None:
    """Preflight: an SAE this run folder already holds must be readable and fit its model's penultimate width
    (one ArtifactError line otherwise, before anything is trained)."""
    for which, model_cfg in (("a", run.cfg.model_a), ("b", run.cfg.model_b)):
        path = run.layout.concept_sae(which)
        if checkpoint_exists(path):
            _check_fits(load_sae(path), path, which, model_cfg.hidden_sizes[-1])


def _check_fits(sae: SparseAutoencoder, path, which: str, width: int) -> None:
    from sae_ception.errors import ArtifactError

    if sae.d_in != width:
        raise ArtifactError(f"{path} is an SAE of {sae.d_in}-wide features, but model_{which}'s last hidden layer is "
                            f"{width} wide (model_{which}.hidden_sizes); delete it so the run trains a new one")


def concept_saes(run, model_a, model_b, sample_seed: int) -> ConceptSAEs:
    """Both SAEs: read back from the run folder when they were trained on today's images with today's `sae`
    settings and model weights, else trained (and saved) now. Models are frozen; SAEs come back frozen on the CPU."""
    data, saes, images, steps, warnings = TransferData(run.splits, run.cfg.concept), {}, {}, {}, []
    for which, model in (("a", model_a), ("b", model_b)):
        path = run.layout.concept_sae(which)
        chosen = sae_images(run.cfg.concept, which)
        width = model.blocks[-1][0].out_features
        expected = _expected(run.cfg, which, model)
        sae = None
        if checkpoint_exists(path):
            sae = load_sae(path)  # checks the checkpoint whole; its config.json is then read alone
            _check_fits(sae, path, which, width)
            meta = read_json(path / META_FILE, f"delete {path} to have it trained again")
            saved = (meta.get("extra") or {}).get("made_with")
            if saved != expected:
                log.info("sae_%s: %s was trained on other images, settings or weights of model %s; training it "
                         "again", which, path, which.upper())
                sae = None
            else:
                log.info("sae_%s: found %s, skipping (resume)", which, path)
                stats = meta["extra"]["training"]
                steps[which] = int(stats["steps"])
        if sae is None:
            sae, stats = _train(run, which, model, chosen.indices(data, sample_seed), expected, path)
            steps[which] = int(stats["steps"])
        if stats.get("degenerate"):
            warnings.append(f"the SAE of model {which.upper()} ({path}) is degenerate: none of its {sae.d_sae} latents "
                            "fires on its training features, so every SAE-based method reads an empty concept space; "
                            f"change sae.* (e.g. sae.l1_coefficient, sae.lr) or the seed")
            log.warning("%s", warnings[-1])
        saes[which], images[which] = frozen(sae), chosen
    return ConceptSAEs(saes["a"], saes["b"], images, steps, warnings)


def _train(run, which: str, model, indices: torch.Tensor, expected: dict, path) -> tuple[SparseAutoencoder, dict]:
    cfg = run.cfg
    acts = penultimate(model, run.splits.train.x[indices], cfg.eval_batch_size)
    seed = run.seed_for(0, f"sae_{which}")
    torch.manual_seed(seed)
    try:
        sae = build_sae(cfg.sae, d_in=acts.shape[1])
    except ConfigError as ex:  # a width rule of the SAE type (e.g. sae.k > d_sae) for this model's features
        raise ConfigError(f"{ex} (for model_{which}'s {acts.shape[1]}-wide penultimate features)") from None
    log.info("sae_%s: training a %s SAE %d -> %d on %d penultimate activations of model %s", which, cfg.sae.type,
             sae.d_in, sae.d_sae, len(acts), which.upper())
    stats = train_sae(sae, acts, cfg.sae, accelerator=run.accelerator, seed=seed, log_fn=run.log_fn(f"sae_{which}"),
                      show_progress=cfg.progress, what=f"SAE training of model {which.upper()}")
    fit = stats["final_fit"]
    log.info("sae_%s: explains %s of the variance at L0 %.2f", which,
             "n/a" if fit["explained_variance"] is None else f"{fit['explained_variance']:.3f}", fit["l0"])
    sae.save(path, extra={"made_with": expected, "training": stats})
    return sae, stats
