"""Mini-batches over in-memory inputs: shuffled row indices (seeded, sharded per process) and row selection
that works the same for a feature matrix (MLP) and a dict of token tensors (transformers)."""

from typing import Iterator, Union

import torch

Inputs = Union[torch.Tensor, dict[str, torch.Tensor]]  # one split's model inputs, rows = examples


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """Yield index batches of one epoch. With several processes each takes its own equal-length shard."""
    perm = torch.randperm(n, generator=generator)
    if world_size > 1:
        perm = perm[: n - n % world_size][rank::world_size]
    yield from perm.split(batch_size)


def num_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    per_process = n // world_size if world_size > 1 else n
    return -(-per_process // batch_size)


def take(inputs: Inputs, rows) -> Inputs:
    """Rows (an index tensor or a slice) of a feature matrix or of every tensor in a dict."""
    return {k: v[rows] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[rows]


def to_device(inputs: Inputs, device) -> Inputs:
    return {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)


def num_rows(inputs: Inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def sequential_batches(inputs: Inputs, batch_size: int) -> Iterator[Inputs]:
    """Consecutive batches in order (evaluation, activation collection)."""
    for start in range(0, num_rows(inputs), batch_size):
        yield take(inputs, slice(start, start + batch_size))
