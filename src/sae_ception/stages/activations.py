"""Stage helper: the activations of model N, computed once per cycle and reused by every later stage.

The activations are a cache: whatever can be recomputed is never trusted blindly. Before a run uses a cycle's
folder, every file is checked (it loads; its shape fits the data, the model's width and the class count; its
labels are this run's; every value is finite: checked while the files are written and recorded in a manifest,
so a later load reads them all only if a file changed since). A damaged cache is recomputed, with a warning
naming the file; freshly computed activations that are not finite mean the model itself is broken, which stops
the run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from sae_ception.activations import (SPLITS, SplitActivations, collect_activations, load_activations,
                                     manifest_says_finite, write_manifest)
from sae_ception.errors import DivergenceError
from sae_ception.run import RunContext
from sae_ception.stages.artifacts import import_model, load_cycle_model
from sae_ception.utils.batching import example_lengths

log = logging.getLogger(__name__)

FINITE_CHECK_ROWS = 65536  # rows per block of the finiteness check (bounded memory on any activation set)


def _all_finite(array: np.ndarray) -> bool:
    return all(bool(np.isfinite(array[start:start + FINITE_CHECK_ROWS]).all())
               for start in range(0, len(array), FINITE_CHECK_ROWS))


def activation_problem(path: Path, ctx: RunContext) -> Optional[str]:
    """Why the activations folder `path` cannot be used for this run (None when it can): a missing, truncated or
    unreadable file, a shape that does not fit, labels of other data, or non-finite values. Finiteness is taken
    from the folder's manifest when no file changed since it was written; otherwise every value is read once
    (in blocks) and, when all are finite, the manifest is rewritten so the next load need not read them again."""
    width, splits = ctx.cfg.model.target_width(), ctx.splits
    arrays = {}
    for name in SPLITS:
        split = getattr(splits, name)
        n = len(split.y)
        expected = {"acts": (n, width), "labels": (n,), "logits": (n, splits.num_classes)}
        if ctx.cfg.sae.token_level and splits.is_text:
            expected["tokens"] = (int(example_lengths(split.x).sum()), width)
        for kind, shape in expected.items():
            file = path / f"{name}.{kind}.npy"
            if not file.is_file():
                return f"{file} is missing"
            try:
                array = np.load(file, mmap_mode="r")
            except (ValueError, OSError, EOFError) as ex:
                return f"{file} is damaged ({' '.join(str(ex).split())[:120]})"
            if array.shape != shape:
                return f"{file} has shape {array.shape}, not {shape}"
            if kind == "labels" and not np.array_equal(array, split.y.numpy()):
                return f"{file} holds the labels of other data"
            if kind != "labels":
                arrays[file] = array
    finite = manifest_says_finite(path)
    if finite is None:
        bad = next((file for file, array in arrays.items() if not _all_finite(array)), None)
        if bad is not None:
            return f"{bad} holds NaN or inf values"
        write_manifest(path, True)
    elif not finite:
        return f"{path} holds NaN or inf values (found while they were written)"
    return None


def _write_activations(ctx: RunContext, cycle: int, path) -> Optional[str]:
    """Main process: make sure `path` holds usable activations of model N, recomputing unusable ones. Returns
    the one-line reason when model N's fresh activations are not finite (nothing is kept), else None."""
    problem = activation_problem(path, ctx) if path.is_dir() else None
    if problem is not None:
        log.warning("cycle %d: cached activations unusable: %s; recomputing them", cycle, problem)
        shutil.rmtree(path)
    if not path.is_dir():
        with ctx.timed("activations", cycle):
            model = load_cycle_model(ctx, cycle)  # imported by every process before (import_model)
            collect_activations(model, ctx.splits, ctx.accelerator, ctx.cfg.eval_batch_size, path,
                                dtype=ctx.cfg.activation_dtype, tokens=ctx.cfg.sae.token_level)
        problem = activation_problem(path, ctx)
        if problem is not None:
            shutil.rmtree(path)
            return (f"cycle {cycle}: the model of cycle {cycle} ({ctx.layout.model(cycle)}) gives unusable "
                    f"activations ({problem}); its training diverged or it does not fit this data: retrain it with "
                    "a lower learning rate")
    return None


def activations_for_cycle(ctx: RunContext, cycle: int) -> dict[str, SplitActivations]:
    if cycle in ctx.activation_cache:
        return ctx.activation_cache[cycle]
    path = ctx.layout.activations(cycle)
    import_model(ctx, cycle)  # a collective (an inputs.model is copied in once): every process, before main-only work
    failure = None
    if ctx.accelerator.is_main_process:
        failure = _write_activations(ctx, cycle, path)
    if ctx.accelerator.num_processes > 1:  # every process stops on the main process's finding, none waits for it
        from accelerate.utils import broadcast_object_list

        failure = broadcast_object_list([failure], from_process=0)[0]
    if failure is not None:
        raise DivergenceError(failure)
    acts = load_activations(path)
    log.info("cycle %d: target-layer activations (%s) at %s", cycle,
             " / ".join(f"{len(a.labels_N)} {name}" + (f" ({len(a.tokens_TD)} tokens)" if a.tokens_TD is not None else "")
                        for name, a in acts.items()), path)
    ctx.activation_cache = {cycle: acts}  # keep one cycle mapped
    return acts

