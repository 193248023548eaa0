"""Stage helper: SAE N's codes of a split of model N's activations, stored sparse on disk (evaluation/rows.py)
and shared by the evaluation and the feature report of the cycle.

A store is reused only when it was made by this SAE (a digest of its weights) from these activations (the
activation file's size and modification time); otherwise it is encoded again, which also rewrites a damaged
or half-written store."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

from sae_ception.errors import ArtifactError, DivergenceError
from sae_ception.evaluation.rows import SparseCodes, write_codes
from sae_ception.run import RunContext
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.utils.digest import state_digest

log = logging.getLogger(__name__)


def codes_for_split(ctx: RunContext, cycle: int, split: str, sae,
                    on_batch: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
                    before_commit: Optional[Callable[[], object]] = None) -> tuple[SparseCodes, bool]:
    """The codes of every `split` row (one per example), and whether they were encoded now. When they are,
    `on_batch(x_BD, codes_BF)` sees every batch (e.g. to sum the SAE's quality in the same pass) and
    `before_commit()` runs before the new store replaces an older one: an exception there (e.g. a DivergenceError
    for untrustworthy numbers) leaves the folder as it was. With several processes only the main one encodes; any
    failure there is raised in every process (none is left waiting for it)."""
    path = ctx.layout.codes(cycle, split)
    stat = os.stat(ctx.layout.activations(cycle) / f"{split}.acts.npy")
    made_with = {"sae": state_digest(sae), "activations": [stat.st_size, stat.st_mtime_ns]}
    store, encoded, failure = None, False, None
    if ctx.accelerator.is_main_process:  # one writer; the other processes read what it wrote
        store = _reusable(path, made_with, cycle)
        if store is None:
            rows_ND = activations_for_cycle(ctx, cycle)[split].acts_ND
            try:
                store = write_codes(sae, rows_ND, path, ctx.cfg.eval_batch_size, made_with=made_with,
                                    on_batch=on_batch, before_commit=before_commit)
            except Exception as ex:  # noqa: BLE001 (told to every process, then raised as it was)
                if ctx.accelerator.num_processes == 1:
                    raise
                failure = ex
            encoded = True
    if ctx.accelerator.num_processes > 1:  # every process stops on the main process's failure, none waits for it
        from accelerate.utils import broadcast_object_list

        failure = broadcast_object_list([failure], from_process=0)[0]
        if failure is not None:
            raise failure if isinstance(failure, (DivergenceError, ArtifactError, OSError)) else \
                ArtifactError(f"encoding the codes of cycle {cycle}'s {split} split failed: {failure}")
        store = store or SparseCodes(path)
    return store, encoded


def _reusable(path: Path, made_with: dict, cycle: int) -> Optional[SparseCodes]:
    if not path.is_dir():
        return None
    try:
        store = SparseCodes(path)
    except ArtifactError as ex:
        log.warning("cycle %d: %s; encoding the codes again", cycle, str(ex).split("; ")[0])
        return None
    return store if store.made_with == made_with else None
