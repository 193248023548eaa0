"""Classifiers behind a registry keyed by `model.name`; checkpoints record what built them."""

from sae_ception.models import mlp, transformer  # noqa: F401  (register the classifiers)
from sae_ception.models.base import MODELS, Classifier, ModelConfig
from sae_ception.models.checkpoint import build_model, load_model, save_model
from sae_ception.models.hooks import capture_output, replace_output

__all__ = [
    "MODELS",
    "Classifier",
    "ModelConfig",
    "build_model",
    "load_model",
    "save_model",
    "capture_output",
    "replace_output",
]
