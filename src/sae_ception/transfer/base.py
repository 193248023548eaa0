"""The transfer-method interface: one class per method, registered by name, with a config class and one YAML.

A method receives a `TransferContext` (transfer/context.py) and returns an edited copy of model A. Everything it
learns about the target class comes through the context, which counts it (the budget), and it never changes A
or B themselves (the stage checks that after every method)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sae_ception.transfer.config import TRANSFER_METHODS, TransferMethodConfig

if TYPE_CHECKING:
    from sae_ception.models import Classifier
    from sae_ception.transfer.context import TransferContext, TransferData

__all__ = ["TRANSFER_METHODS", "TransferMethod", "TransferMethodConfig"]


class TransferMethod:
    """Base of every transfer method. Subclasses set `config_class` and implement `apply`; `preflight` checks
    what depends on the data (e.g. enough target-class images) before anything is trained."""

    config_class = TransferMethodConfig
    uses_concept_saes: ClassVar[bool] = False  # reads A's and B's SAEs (the run trains them once, before it runs)

    def __init__(self, name: str, cfg: TransferMethodConfig):
        self.name = name  # the key of `transfer` this method runs as (its YAML's name)
        self.cfg = cfg

    def setting(self, key: str) -> str:
        """`transfer.<name>.<key>`: how a message names one of this method's settings."""
        return f"transfer.{self.name}.{key}"

    def preflight(self, data: "TransferData") -> None:
        """Raise ConfigError (one line) for settings the dataset cannot satisfy. Default: a method with a
        `target_images` setting (k) needs k training images of the target class."""
        k = getattr(self.cfg, "target_images", None)
        if k is not None:
            own = self.setting("target_images")
            if k == data.concept.target_images:  # the shared default (configs/transfer/*.yaml interpolate it)
                data.require_target_images("concept.target_images", k, f" (as {own})")
            else:
                data.require_target_images(own, k)

    def apply(self, ctx: "TransferContext") -> "Classifier":
        """An edited copy of model A (`ctx.copy_of_a()`), taught `ctx.concept.target`."""
        raise NotImplementedError
