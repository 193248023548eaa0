"""`finetune_head`: A's target output row (weights and bias) trained on k labelled target images with replay of A's
own classes as negatives; every other parameter frozen. The training baseline of head-row surgery."""

from dataclasses import dataclass

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod
from sae_ception.transfer.finetune import FinetuneConfig, finetune
from sae_ception.transfer.shapes import require_mlp


@dataclass
class FinetuneHeadConfig(FinetuneConfig):
    type: str = "finetune_head"
    lr: float = 0.01  # the reference's learning rate; only width + 1 values train

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        require_mlp(name, cfg, "training one output row")


@TRANSFER_METHODS.register("finetune_head")
class FinetuneHead(TransferMethod):
    """Adam on the head's `concept.target` row only (a separate weight row and bias, written back at the end): the
    edited model differs from A in at most width + 1 values, like `copy_head`.

    Replay is on by default (replay_batch 32): trained on target images alone, cross-entropy can only raise the
    row's logit everywhere (mostly through its bias), so A would call every image the target; with A's own images
    as negatives the row must learn to tell the target from them. Draws the same images and batches as
    `finetune_replay` for the same seed: the two differ only in which parameters train."""

    config_class = FinetuneHeadConfig

    def apply(self, ctx):
        return finetune(ctx, self.cfg, scope="target_row")
