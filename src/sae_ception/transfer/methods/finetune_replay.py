"""`finetune_replay`: every parameter of A trained on k labelled target images with replay of A's own classes, for
the same steps and batches as `finetune_head`. The training baseline of every method that edits more than a row."""

from dataclasses import dataclass

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod
from sae_ception.transfer.finetune import FinetuneConfig, finetune


@dataclass
class FinetuneReplayConfig(FinetuneConfig):
    type: str = "finetune_replay"
    lr: float = 1e-3  # Adam on every weight: A's own training rate (0.01 would move all of A's features at once)


@TRANSFER_METHODS.register("finetune_replay")
class FinetuneReplay(TransferMethod):
    """Adam on all of A's parameters; each step mixes `target_batch` target images with `replay_batch` images of
    A's classes (their own labels), which hold A's other classes in place. Same images, batches and step budget as
    `finetune_head` for the same seed (only the trained parameters differ); replay_batch=0 trains on the target
    images alone (forgetting is then expected)."""

    config_class = FinetuneReplayConfig

    def apply(self, ctx):
        return finetune(ctx, self.cfg, scope="all")
