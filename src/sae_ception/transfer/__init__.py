"""Concept transfer between models: teach model A a class only model B learned, by surgery or by training,
and measure transfer, preservation, specificity and the budget each method spent (scripts/transfer_concept.py)."""

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.config import ConceptConfig, TransferConfig, parse_transfer_config

__all__ = ["TRANSFER_METHODS", "TransferMethod", "TransferMethodConfig", "ConceptConfig", "TransferConfig",
           "parse_transfer_config"]
