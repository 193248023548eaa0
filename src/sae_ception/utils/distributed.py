"""Several processes (torchrun / `accelerate launch`): who logs, what the run says about its processes, and which
batch sizes cannot be split across them.

Only the main process (rank 0) writes files, INFO lines and warnings; the others print errors only, prefixed with
their rank (`RankFilter`, `RankFormatter`, installed by configs/hydra/job_logging/sae_ception.yaml): every process
computes the same warnings, which would repeat the main process's. An error found before the run starts is the
same on every process and printed by rank 0 alone (cli.run_task); a later error of another rank is printed by it.
Importing this module loads neither torch nor accelerate: Hydra imports it while it sets up logging."""

from __future__ import annotations

import logging
import os
from typing import Optional

CPU_COMMAND = "torchrun --standalone --nproc_per_node N scripts/train_cycle.py ..."


def process_rank() -> int:
    """This process's global rank as the launcher set it (RANK; 0 for a plain `python` run). Valid before the
    Accelerator exists, so errors found while reading the settings are printed by rank 0 only."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


class RankFilter(logging.Filter):
    """On the main process every record passes; on another rank only errors (ERROR and above): its INFO lines and
    warnings are computed alike by every process and would repeat the main process's, while an error may be that
    rank's own (cli.run_task keeps the errors every process finds before the run starts to rank 0)."""

    def __init__(self, name: str = ""):
        super().__init__(name)
        self.rank = process_rank()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.ERROR


class RankFormatter(logging.Formatter):
    """The product's format; on a rank other than 0 each line starts with `[rank N] `, so an error says which
    process printed it."""

    def __init__(self, fmt: Optional[str] = None, datefmt: Optional[str] = None, style: str = "%"):
        super().__init__(fmt, datefmt, style)
        self.prefix = f"[rank {process_rank()}] " if process_rank() else ""

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + super().format(record)


def single_process_launch_warning(environ: Optional[dict] = None) -> Optional[str]:
    """The warning for `accelerate launch --num_processes N>1` that started one process (its simple launcher,
    used with --cpu or without --multi_gpu, sets MASTER_ADDR/MASTER_PORT for N > 1 but starts one process and
    no WORLD_SIZE); None otherwise."""
    env = os.environ if environ is None else environ
    if "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        return (f"accelerate launch started 1 process although --num_processes > 1 was given (without --multi_gpu "
                f"it starts one); for N processes on CPU run `{CPU_COMMAND}`, on GPUs `accelerate launch "
                "--multi_gpu --num_processes N scripts/train_cycle.py ...`")
    return None


def describe_processes(accelerator) -> str:
    """`device cpu, processes: 2 (MULTI_CPU, gloo)`, or `device cpu, processes: 1` for a single process."""
    text = f"device {accelerator.device}, processes: {accelerator.num_processes}"
    if accelerator.num_processes > 1:
        backend = getattr(accelerator.state, "backend", None)
        text += f" ({accelerator.distributed_type.value}{', ' + backend if backend else ''})"
    return text


def check_rows_per_process(batch_size: int, micro_batches: int, processes: int, setting: str) -> None:
    """Raise the one-line ConfigError when a micro-batch of `batch_size / micro_batches` rows (a global batch,
    split across processes) gives some of the `processes` no row at all: they would compute nothing but
    placeholders on every step. `setting` names the batch size (`model.batch_size`)."""
    from sae_ception.errors import ConfigError

    rows = batch_size // micro_batches
    if rows >= processes:
        return
    split = f" / model.gradient_accumulation_steps={micro_batches} = {rows} rows per micro-batch" \
        if micro_batches > 1 else ""
    raise ConfigError(f"{setting}={batch_size}{split} is fewer than the {processes} processes: batch sizes are global "
                      f"(split across the processes), so each process needs a row; use {setting} >= "
                      f"{processes * micro_batches} or fewer processes")


def check_batch_sizes(cfg, processes: int) -> None:
    """`check_rows_per_process` for the classifier's and the SAE's batch sizes of a run's config."""
    if processes > 1:
        check_rows_per_process(cfg.model.batch_size, cfg.model.gradient_accumulation_steps, processes,
                               "model.batch_size")
        if getattr(cfg, "sae", None) is not None:  # a concept-transfer run has no SAE
            check_rows_per_process(cfg.sae.batch_size, 1, processes, "sae.batch_size")
