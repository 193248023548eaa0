"""`joint`: a model of A's architecture trained from scratch on A's classes and the target: the ceiling."""

from dataclasses import dataclass

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.training import train_on_classes


@dataclass
class JointConfig(TransferMethodConfig):
    type: str = "joint"


@TRANSFER_METHODS.register("joint")
class Joint(TransferMethod):
    """Trains model_a's architecture and schedule (model_a.epochs, lr, batch size) on every training image of
    concept.classes_a and concept.target, keeping the best epoch on their validation images when model_a.keep_best
    (counted as validation images). Its budget is every target image with its label and all of its steps; what
    any transfer method should be held against. It is a new model: every parameter differs from A's."""

    config_class = JointConfig

    def apply(self, ctx):
        classes = [*ctx.concept.classes_a, ctx.concept.target]
        train = ctx.training_split(classes)
        keep_best = ctx.run.cfg.model_a.keep_best  # choosing the kept epoch reads labelled validation images
        val = ctx.validation_split(classes) if keep_best else ctx.validation_split([])
        model, info = train_on_classes(ctx.run, ctx.run.cfg.model_a, train, val, int(ctx.generator.initial_seed()),
                                       stage=f"transfer/{ctx.name}", setting="model_a")
        ctx.add_steps(info["steps"])
        return model.to(ctx.device)
