"""Mini-batches over in-memory inputs: shuffled row indices (seeded), each process's share of a batch, and row
selection that works the same for a feature matrix (MLP) and a dict of token tensors (transformers).

Batch sizes are global: `batch_size` rows per optimiser step over all processes. Every process draws the same
batches as a single process would (`shuffled_batches`) and computes its `process_shares` of each, with weights
that make the gradient averaged over processes the single-process batch mean (up to floating-point order)."""

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch

Inputs = Union[torch.Tensor, dict[str, torch.Tensor]]  # one split's model inputs, rows = examples
CODE_BUDGET = 1 << 24  # dense SAE codes (rows x d_sae) one encoding batch may hold: 64 MB of float32


def code_batch(batch_size: int, d_sae: int) -> int:
    """Rows per batch that encodes with an SAE outside training: `batch_size`, fewer when a batch of dense codes would
    exceed CODE_BUDGET values (4,096 rows at d_sae 4,096; 1,024 at 16,384), so a wide SAE's batch never takes more
    memory than a narrow one's."""
    return max(1, min(batch_size, CODE_BUDGET // max(d_sae, 1)))


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, lengths: Optional[torch.Tensor] = None,
    group_batches: int = 50,
) -> Iterator[torch.Tensor]:
    """Yield the row-index batches [<= batch_size] of one epoch over n rows: every row exactly once, the last
    batch short when batch_size does not divide n. These are global batches: with several processes every
    process draws the same ones from an identically seeded `generator` and computes its `process_shares`.

    With `lengths` (tokens per example), examples are grouped by length the way Hugging Face's
    `group_by_length` does: the shuffled order is cut into groups of `group_batches` batches, each group is
    sorted by length and cut into batches, and the batches are shuffled. Batches then hold texts of
    similar length, so little compute goes to padding, while the epoch stays randomly ordered."""
    perm = torch.randperm(n, generator=generator)
    if lengths is None:
        yield from perm.split(batch_size)
        return
    batches = []
    for group in perm.split(batch_size * group_batches):
        group = group[torch.argsort(lengths[group], descending=True, stable=True)]
        batches += list(group.split(batch_size))
    for position in torch.randperm(len(batches), generator=generator):
        yield batches[position]


def num_batches(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch over n rows: ceil(n / batch_size), whatever the number of processes."""
    return -(-n // batch_size)


@dataclass(frozen=True)
class Share:
    """What one process computes of one (micro-)batch: `rows` (indices into the split) and `weight`, the factor
    on its mean loss over those rows. weight = len(rows) * world / rows in the whole global batch, so that the
    mean over processes of weight * (gradient of the mean loss over `rows`) is the gradient of the mean loss
    over the global batch: DDP and the SAE trainer average gradients over processes. A process with no row in a
    micro-batch still takes part in its collectives: it gets the micro-batch's first row with weight 0."""

    rows: torch.Tensor
    weight: float


def process_shares(batch: torch.Tensor, rank: int = 0, world_size: int = 1,
                   micro_size: Optional[int] = None) -> list[Share]:
    """This process's part of one global batch of row indices [B]: the batch is cut into micro-batches of
    `micro_size` rows (None: one micro-batch) exactly as a single process would, and the process takes rows
    rank, rank + world_size, ... of each. Every process gets the same number of shares (one per micro-batch),
    so collectives stay matched; over all processes and shares every row of `batch` appears once and the
    weights sum to world_size (each micro-batch's weights to world_size * its rows / B).

    Raises ValueError for an empty batch, a rank outside [0, world_size) or micro_size < 1."""
    if len(batch) == 0 or not 0 <= rank < world_size or (micro_size is not None and micro_size < 1):
        raise ValueError(f"process_shares needs a non-empty batch, 0 <= rank < world_size and micro_size >= 1 "
                         f"(got {len(batch)} rows, rank {rank}, world_size {world_size}, micro_size {micro_size})")
    shares = []
    for micro in batch.split(micro_size or len(batch)):
        rows = micro[rank::world_size]
        shares.append(Share(rows, len(rows) * world_size / len(batch)) if len(rows) else Share(micro[:1], 0.0))
    return shares


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
