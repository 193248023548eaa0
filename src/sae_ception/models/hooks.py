"""Read or overwrite a module's output with forward hooks, so one mechanism serves every architecture."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


@contextlib.contextmanager
def capture_output(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, `box["acts"]` holds the module's latest output (graph kept, for auxiliary losses)."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        box["acts"] = _first(output)

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, the module's output is replaced by `fn(output)` (e.g. an SAE reconstruction)."""

    def hook(_module, _inputs, output):
        return _with_first(output, fn(_first(output)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
