"""Shuffled mini-batches of row indices over in-memory tensors: vectorised, seeded, sharded per process."""

from typing import Iterator

import torch


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
