"""The SAE-type registry lives in its own module so variants and `base.py` can both import it without a cycle."""

from sae_ception.registry import Registry

SAE_TYPES: Registry = Registry("SAE type", "sae.type")
