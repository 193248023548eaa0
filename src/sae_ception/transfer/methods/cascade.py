"""`cascade`: B's pathway to the target, followed backwards from its output row through the weights, transplanted
into A (the reference's "cascade transplant", `model_surgery_ultimate_pure.py`: 51.93% claimed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List

from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.layers import linear_layers
from sae_ception.transfer.pathways import cascade_selection, transplant
from sae_ception.transfer.shapes import require_same_architecture

log = logging.getLogger(__name__)

REFERENCE_RATIOS = [24, 6, 4, 3]  # the reference's, for its 784-512-256-128-64 "mega" MLP


def _listed(values: list[int]) -> str:
    """A list as a Hydra override writes it: [24,6,4,3]."""
    return "[" + ",".join(str(v) for v in values) + "]"


@dataclass
class CascadeConfig(TransferMethodConfig):
    type: str = "cascade"
    # units kept per hidden layer, last hidden layer first: ratios[0] units by |B's target row|, then ratios[i]
    # inputs per kept unit of the layer above (each capped at the layer's width); one per hidden layer of A
    ratios: List[int] = field(default_factory=lambda: list(REFERENCE_RATIOS))
    isolate: bool = False  # cut the pathway out as its own circuit (pathways.transplant); false: incoming rows only

    def validate_for(self, name, cfg) -> None:
        setting, note = f"transfer.{name}.ratios", ""
        followed = cfg.transfer.get("cascade") if name != "cascade" else None
        if followed is not None and list(getattr(followed, "ratios", [])) == list(self.ratios):
            # cascade_isolated.yaml interpolates ${transfer.cascade.ratios}: name what the user sets
            setting, note = "transfer.cascade.ratios", f" (followed by transfer.{name}.ratios)"
        require_same_architecture(name, cfg, "transplanting B's pathway into A")
        ratios, sizes = list(self.ratios), list(cfg.model_a.hidden_sizes)
        if len(ratios) != len(sizes):
            base = ratios or REFERENCE_RATIOS
            example = (base + [base[-1]] * len(sizes))[:len(sizes)]
            entries = f"{len(ratios)} entr{'y' if len(ratios) == 1 else 'ies'}"
            raise ConfigError(f"{setting}={ratios}{note} has {entries} but model_a has {len(sizes)} hidden "
                              f"layers (hidden_sizes={sizes}); give one ratio per hidden layer, last layer first, "
                              f"e.g. {setting}={_listed(example)}")
        small = [r for r in ratios if r < 1]
        if small:
            raise ConfigError(f"{setting}={ratios}{note} has {small[0]}; every ratio must be >= 1 (units kept per unit of "
                              f"the layer above), e.g. {setting}={_listed([max(1, r) for r in ratios])}")


@TRANSFER_METHODS.register("cascade")
class Cascade(TransferMethod):
    """From B's target output row backwards: the last hidden layer's ratios[0] units of largest |B.head.weight
    [target]|; then, for each kept unit of hidden layer l, its ratios[i] inputs of largest |weight| in layer l-1,
    united per layer, down to the first hidden layer. The kept units are transplanted (A's incoming rows and
    biases := B's) and B's target output row is copied. Uses no image and no step.

    With every unit kept (ratios at least the widths) A's target logit becomes B's exactly."""

    config_class = CascadeConfig

    def apply(self, ctx):
        layers_b = linear_layers(ctx.model_b, "model_b.name")
        target = ctx.concept.target
        selected = cascade_selection(layers_b[-1].weight[target], [layer.weight for layer in layers_b[:-1]],
                                     self.cfg.ratios)
        log.info("transfer/%s: units per hidden layer %s of %s", ctx.name, [len(units) for units in selected],
                 [layer.out_features for layer in layers_b[:-1]])
        edited = ctx.copy_of_a()
        transplant(edited, ctx.model_b, selected, target, copy_head_row=True, isolate=self.cfg.isolate)
        return edited
