"""Build a classifier from config, save it as safetensors + JSON, and load it back with shape checks."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from sae_ception.errors import ArtifactError
from sae_ception.models.base import MODELS, Classifier, ModelConfig
from sae_ception.utils.io import load_checkpoint, load_state_strict, save_checkpoint


def build_model(cfg: ModelConfig, input_dim: int, num_classes: int, pretrained_weights: bool = True) -> Classifier:
    """A fresh classifier; `pretrained_weights=False` skips reading pretrained files (a checkpoint follows)."""
    return MODELS.get(cfg.name)(cfg, input_dim=input_dim, num_classes=num_classes, pretrained_weights=pretrained_weights)


def save_model(model: Classifier, directory: str | Path, extra: dict | None = None) -> Path:
    meta = {"kind": "model", "name": model.cfg.name, "config": asdict(model.cfg), **model.build_meta()}
    if extra:
        meta["extra"] = extra
    return save_checkpoint(directory, model.state_dict(), meta)


def load_model(directory: str | Path, expected: Classifier, setting: str) -> dict:
    """Load weights into `expected` (built from the current config); a mismatch is one clear line."""
    state, meta = load_checkpoint(directory)
    if meta.get("kind") != "model":
        raise ArtifactError(f"{setting}: {directory} holds a {meta.get('kind', 'unknown')} checkpoint, not a model")
    if meta.get("name") != expected.cfg.name:
        raise ArtifactError(
            f"{setting}: {directory} holds a {meta.get('name')!r} model but model.name={expected.cfg.name!r}"
        )
    load_state_strict(expected, state, str(directory), setting)
    return meta


def config_from_checkpoint(directory: str | Path) -> ModelConfig:
    """The config a checkpoint was built with (to rebuild it without the original run's settings)."""
    _, meta = load_checkpoint(directory)
    cls = MODELS.get(meta["name"]).config_class
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), meta["config"]))
