"""Target-layer activations of one model on every split, computed once per cycle and kept on disk.

Each cycle's activations are a folder of `.npy` files written batch by batch into memory-mapped arrays
and read back memory-mapped, so SAE training, evaluation and sharpening stream them from disk and a
run whose activations exceed RAM still works. Per split: `acts` (one row per example, what the
SAE-ception loss aligns), `labels`, `logits` (task accuracy needs no second pass), and with
`sae.token_level` on text, `tokens` (one row per non-padding token, what a token-level SAE trains on).
"""

from __future__ import annotations

import errno
import json
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
from sae_ception.utils.io import atomic_dir, write_json

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
                  batch_size: int, dtype: str, tokens: bool) -> bool:
    """Write one split's activations and logits into `folder`, a batch at a time. Returns whether every value
    written is finite (checked on each batch in memory, as stored: float16 overflows to inf)."""
    model.eval()
    n, width, np_dtype = num_rows(inputs), model.target_width(), NUMPY_DTYPES[dtype]
    acts = _new_memmap(folder / f"{name}.acts.npy", np_dtype, (n, width))
    token_rows, starts = None, None
    if tokens:
        lengths = example_lengths(inputs)
        starts = (torch.cumsum(lengths, 0) - lengths).tolist()  # example i's tokens start here (data order)
        token_rows = _new_memmap(folder / f"{name}.tokens.npy", np_dtype, (int(lengths.sum()), width))
    logits_NC, finite = None, True
    with model.capture_target() as captured:
        for rows, batch in inference_batches(inputs, batch_size):
            with accelerator.autocast():
                logits = model(to_device(batch, accelerator.device)).float().cpu()
            if logits_NC is None:
                logits_NC = torch.empty(n, logits.shape[1])
            logits_NC[rows] = logits
            batch_acts = captured.acts.float().cpu().numpy().astype(np_dtype, copy=False)
            finite &= bool(np.isfinite(batch_acts).all() and torch.isfinite(logits).all())
            acts[rows.numpy()] = batch_acts
            if token_rows is not None:
                batch_tokens = captured.tokens.float().cpu().numpy().astype(np_dtype, copy=False)  # example by example
                finite &= bool(np.isfinite(batch_tokens).all())
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
    return finite


def collect_activations(model: Classifier, splits: DataSplits, accelerator: Accelerator, batch_size: int,
                        path: Path, dtype: str = "float32", tokens: bool = False) -> None:
    """Write every split's activations into the folder `path` (atomically: complete or absent), with a
    manifest (`write_manifest`) saying whether every value is finite."""
    model = model.to(accelerator.device)
    with atomic_dir(path) as tmp:
        finite = True
        for name in SPLITS:
            split = getattr(splits, name)
            finite &= collect_split(model, split.x, tmp, name, accelerator, batch_size, dtype, tokens and splits.is_text)
            np.save(tmp / f"{name}.labels.npy", split.y.numpy())
        write_manifest(tmp, finite)


MANIFEST = "manifest.json"


def _file_stamps(folder: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of every .npy file in `folder`: what changes when a file is edited."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.glob("*.npy"))}


def write_manifest(folder: Path, finite: bool) -> None:
    """Record the files as they are now and whether all their values are finite, so a later load that finds
    them unchanged need not read them all again to know it (`manifest_says_finite`)."""
    write_json(folder / MANIFEST, {"files": _file_stamps(folder), "finite": finite})


def manifest_says_finite(folder: Path) -> Optional[bool]:
    """Whether every value is finite, as the manifest recorded it, when every file is as the manifest saw it
    (same names, sizes and modification times); None when there is no usable manifest or a file changed."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return bool(manifest["finite"]) if manifest["files"] == _file_stamps(folder) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
