"""`none`: A unchanged, the floor every method must beat."""

from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod


@TRANSFER_METHODS.register("none")
class NoTransfer(TransferMethod):
    """Returns a copy of A: transfer is what A does with target images it never learned (usually 0)."""

    def apply(self, ctx):
        return ctx.copy_of_a()
