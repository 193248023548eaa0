"""Target-layer activations of one model on every split, computed once per cycle and kept on disk.

Each cycle's activations are a folder of `.npy` files written batch by batch into memory-mapped arrays
and read back memory-mapped, so SAE training, evaluation and sharpening stream them from disk and a
run whose activations exceed RAM still works. Per split: `acts` (one row per example, what the
SAE-ception loss aligns), `labels`, `logits` (task accuracy needs no second pass), and with
`sae.token_level` on text, `tokens` (one row per non-padding token, what a token-level SAE trains on).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator

from sae_ception.data import DataSplits
from sae_ception.models import Classifier
from sae_ception.utils.batching import Inputs, example_lengths, inference_batches, num_rows, to_device
from sae_ception.utils.io import atomic_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class SplitActivations:
    acts_ND: torch.Tensor  # per example (memory-mapped)
    labels_N: torch.Tensor
    logits_NC: torch.Tensor
    tokens_TD: Optional[torch.Tensor] = None  # per non-padding token (memory-mapped), when collected

    def sae_rows(self, token_level: bool) -> torch.Tensor:
        """What an SAE trains on and is scored on: token rows for a token-level SAE, else per-example rows."""
        return self.tokens_TD if token_level and self.tokens_TD is not None else self.acts_ND


def _new_memmap(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file mapped for writing, with its disk space reserved first: a full disk is then an OSError
    (ENOSPC) here, not a SIGBUS that kills the process when a page of the sparse file is first written."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.path.getsize(path))
    except OSError as ex:
        if ex.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: write as before
            raise
    finally:
        os.close(fd)
    return array


@torch.no_grad()
def collect_split(model: Classifier, inputs: Inputs, folder: Path, name: str, accelerator: Accelerator,
                  batch_size: int, dtype: str, tokens: bool) -> None:
    """Write one split's activations and logits into `folder`, a batch at a time."""
    model.eval()
    n, width = num_rows(inputs), model.target_width()
    acts = _new_memmap(folder / f"{name}.acts.npy", NUMPY_DTYPES[dtype], (n, width))
    token_rows, starts = None, None
    if tokens:
        lengths = example_lengths(inputs)
        starts = (torch.cumsum(lengths, 0) - lengths).tolist()  # example i's tokens start here (data order)
        token_rows = _new_memmap(folder / f"{name}.tokens.npy", NUMPY_DTYPES[dtype], (int(lengths.sum()), width))
    logits_NC = None
    with model.capture_target() as captured:
        for rows, batch in inference_batches(inputs, batch_size):
            with accelerator.autocast():
                logits = model(to_device(batch, accelerator.device)).float().cpu()
            if logits_NC is None:
                logits_NC = torch.empty(n, logits.shape[1])
            logits_NC[rows] = logits
            acts[rows.numpy()] = captured.acts.float().cpu().numpy()
            if token_rows is not None:
                batch_tokens = captured.tokens.float().cpu().numpy()  # row-major: example by example
                offset = 0
                for row, length in zip(rows.tolist(), batch["attention_mask"].sum(1).tolist()):
                    token_rows[starts[row]:starts[row] + length] = batch_tokens[offset:offset + length]
                    offset += length
    acts.flush()
    if token_rows is not None:
        token_rows.flush()
    if logits_NC is None:
        logits_NC = torch.zeros(0, getattr(model, "num_classes", 0))
    np.save(folder / f"{name}.logits.npy", logits_NC.numpy())


def collect_activations(model: Classifier, splits: DataSplits, accelerator: Accelerator, batch_size: int,
                        path: Path, dtype: str = "float32", tokens: bool = False) -> None:
    """Write every split's activations into the folder `path` (atomically: complete or absent)."""
    model = model.to(accelerator.device)
    with atomic_dir(path) as tmp:
        for name in SPLITS:
            split = getattr(splits, name)
            collect_split(model, split.x, tmp, name, accelerator, batch_size, dtype, tokens and splits.is_text)
            np.save(tmp / f"{name}.labels.npy", split.y.numpy())


def _mapped(path: Path) -> torch.Tensor:
    # copy-on-write mapping: pages are read from disk on demand and never written back
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def load_activations(path: Path) -> dict[str, SplitActivations]:
    out = {}
    for name in SPLITS:
        tokens = path / f"{name}.tokens.npy"
        out[name] = SplitActivations(
            acts_ND=_mapped(path / f"{name}.acts.npy"),
            labels_N=torch.from_numpy(np.load(path / f"{name}.labels.npy")),
            logits_NC=torch.from_numpy(np.load(path / f"{name}.logits.npy")),
            tokens_TD=_mapped(tokens) if tokens.is_file() else None,
        )
    return out
