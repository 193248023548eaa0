"""Mini-batches over in-memory inputs: shuffled row indices (seeded, sharded per process) and row selection
that works the same for a feature matrix (MLP) and a dict of token tensors (transformers)."""

from typing import Iterator, Optional, Union

import torch

Inputs = Union[torch.Tensor, dict[str, torch.Tensor]]  # one split's model inputs, rows = examples


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1,
    lengths: Optional[torch.Tensor] = None, group_batches: int = 50,
) -> Iterator[torch.Tensor]:
    """Yield index batches of one epoch. With several processes each takes its own equal-length shard.

    With `lengths` (tokens per example), examples are grouped by length the way Hugging Face's
    `group_by_length` does: the shuffled order is cut into groups of `group_batches` batches, each group is
    sorted by length and cut into batches, and the batches are shuffled. Batches then hold texts of
    similar length, so little compute goes to padding, while the epoch stays randomly ordered."""
    perm = torch.randperm(n, generator=generator)
    if world_size > 1:
        perm = perm[: n - n % world_size][rank::world_size]
    if lengths is None:
        yield from perm.split(batch_size)
        return
    batches = []
    for group in perm.split(batch_size * group_batches):
        group = group[torch.argsort(lengths[group], descending=True, stable=True)]
        batches += list(group.split(batch_size))
    for position in torch.randperm(len(batches), generator=generator):
        yield batches[position]


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


def example_lengths(inputs: Inputs) -> Optional[torch.Tensor]:
    """Tokens per example for text inputs; None for feature vectors."""
    return inputs["attention_mask"].sum(1) if isinstance(inputs, dict) else None


def inference_batches(inputs: Inputs, batch_size: int) -> Iterator[tuple[torch.Tensor, Inputs]]:
    """(row indices, batch) covering every row once, for passes without gradients. Text is visited
    longest first, so each batch is padded only to similar lengths; callers put results back by row."""
    lengths = example_lengths(inputs)
    n = num_rows(inputs)
    order = torch.arange(n) if lengths is None else torch.argsort(lengths, descending=True, stable=True)
    for rows in order.split(batch_size):
        yield rows, take(inputs, rows)
