"""`copy_head`: B's output row for the target class copied into A (the reference's "direct copy", 0% claimed)."""

from dataclasses import dataclass

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.layers import linear_layers
from sae_ception.transfer.shapes import require_same_last_width


@dataclass
class CopyHeadConfig(TransferMethodConfig):
    type: str = "copy_head"

    def validate_for(self, name, cfg) -> None:
        require_same_last_width(name, cfg, "copying B's output row into A")


@TRANSFER_METHODS.register("copy_head")
class CopyHead(TransferMethod):
    """A's target-class output row (weights and bias) := B's. Uses no image and no step.

    On identical models (A = B) the edited model's target logit equals B's exactly."""

    config_class = CopyHeadConfig

    def apply(self, ctx):
        edited = ctx.copy_of_a()
        head_a, head_b = linear_layers(edited)[-1], linear_layers(ctx.model_b, "model_b.name")[-1]
        target = ctx.concept.target
        head_a.weight.data[target] = head_b.weight.data[target].to(head_a.weight.device)
        head_a.bias.data[target] = head_b.bias.data[target].to(head_a.bias.device)
        return edited
