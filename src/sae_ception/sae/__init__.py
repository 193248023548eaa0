"""Sparse autoencoders behind a registry keyed by `sae.type`; importing this package registers every variant."""

from sae_ception.sae import batchtopk, concept_autoencoder, jumprelu, paper_relu, relu, topk  # noqa: F401  (registers the variants)
from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, build_sae, load_sae
from sae_ception.sae.registry import SAE_TYPES
from sae_ception.sae.relu import ReluSAE, ReluSAEConfig
from sae_ception.sae.saelens_format import load_any_sae, read_saelens_folder, write_saelens_folder
from sae_ception.sae.topk import TopKSAE, TopKSAEConfig
from sae_ception.sae.trainer import train_sae

__all__ = [
    "SAE_TYPES",
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "TrainingState",
    "ReluSAE",
    "ReluSAEConfig",
    "TopKSAE",
    "TopKSAEConfig",
    "build_sae",
    "load_sae",
    "load_any_sae",
    "read_saelens_folder",
    "write_saelens_folder",
    "train_sae",
]
