"""`activation_transplant`: B's hidden units that respond most to the target, by activation, transplanted into A
(the reference's "activation-based analysis", `model_surgery_ultimate_pure.py`: 25% claimed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import torch

from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.layers import hidden_activations
from sae_ception.transfer.pathways import (check_hidden_layers, hidden_layer_indices,
                                           selectivity, top_units, transplant)
from sae_ception.transfer.shapes import require_same_architecture

log = logging.getLogger(__name__)


@dataclass
class ActivationTransplantConfig(TransferMethodConfig):
    type: str = "activation_transplant"
    target_images: int = 100  # k: target-class training images that rank B's units (YAML: concept.target_images)
    negatives_per_class: int = 100  # training images of each of B's other classes: the baseline activation
    top_k: int = 24  # units transplanted per chosen hidden layer (capped at its width)
    layers: Optional[List[int]] = None  # hidden layers to transplant from (0 = first, negative from the end); None: all
    copy_head_row: bool = True  # also copy B's target output row (otherwise nothing routes the units to the target)
    isolate: bool = False  # cut the transplanted units out as their own circuit (pathways.transplant)

    def validate_for(self, name, cfg) -> None:
        def setting(key: str) -> str:
            return f"transfer.{name}.{key}"

        for key in ("target_images", "negatives_per_class", "top_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{setting(key)}={getattr(self, key)} must be a positive integer")
        require_same_architecture(name, cfg, "transplanting B's hidden units into A")
        check_hidden_layers(setting("layers"), self.layers, cfg.model_a.hidden_sizes)
        if self.isolate and (self.layers is not None or not self.copy_head_row):
            raise ConfigError(f"{setting('isolate')}=true cuts the transplanted units out as a circuit from the input "
                              "to the target row, which needs units in every hidden layer and the copied row: use "
                              f"{setting('layers')}=null and {setting('copy_head_row')}=true, or isolate=false")


@TRANSFER_METHODS.register("activation_transplant")
class ActivationTransplant(TransferMethod):
    """Ranks B's hidden units by selectivity: mean activation (post-ReLU) on `target_images` target images minus
    mean activation on `negatives_per_class` images of each of B's other classes. In each hidden layer of
    `layers` (default every one) the `top_k` most selective units (ties to the lower index) are transplanted: A's
    incoming weight row and bias of each := B's; with `copy_head_row`, A's target output row := B's. No steps.

    A unit's incoming row reads the previous layer's units, which are A's unless they were transplanted too, so
    a unit reproduces B's activation only where its inputs came along."""

    config_class = ActivationTransplantConfig

    def apply(self, ctx):
        cfg, concept = self.cfg, ctx.concept
        positives, negatives = ctx.target_and_negatives(cfg.target_images, cfg.negatives_per_class)
        acts_target = hidden_activations(ctx.model_b, positives)
        acts_other = hidden_activations(ctx.model_b, negatives.x)
        chosen = set(hidden_layer_indices(cfg.layers, len(acts_target)))
        selected = [top_units(selectivity(t, o), cfg.top_k) if layer in chosen else torch.zeros(0, dtype=torch.long)
                    for layer, (t, o) in enumerate(zip(acts_target, acts_other))]
        log.info("transfer/%s: units per hidden layer %s from %d target and %d other images", ctx.name,
                 [len(units) for units in selected], len(positives), len(negatives))
        edited = ctx.copy_of_a()
        transplant(edited, ctx.model_b, selected, concept.target, cfg.copy_head_row, isolate=cfg.isolate)
        return edited
