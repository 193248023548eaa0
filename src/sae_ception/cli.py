"""The shared body of every script: validate, check the run folder, then run one task with logging set up.

Everything that can be wrong with the input is checked before anything is written, and reported as
one line (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from sae_ception.config import parse_config
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.errors import ArtifactError, SAECeptionError
from sae_ception.run import RunContext, check_resumable
from sae_ception.utils.device import make_accelerator
from sae_ception.utils.tracking import Tracker

log = logging.getLogger("sae_ception")


def shared_output_dir(output_dir: str, accelerator) -> str:
    """Under `accelerate launch` each process resolves `${now:...}` itself; all must use the main one's folder."""
    if accelerator.num_processes == 1:
        return output_dir
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([output_dir], from_process=0)[0]


def run_entrypoint(name: str, hydra_cfg: DictConfig) -> Any:
    """Body of `scripts/<name>.py`."""
    entry = ENTRYPOINTS[name]
    return run_task(hydra_cfg, entry.task, entry.preflight, from_run_folder=entry.from_run_folder)


Task = Callable[[RunContext], Any]


# Settings a script on a finished run takes from its own command line; everything else from the run.
COMMAND_LINE_SETTINGS = ("wandb", "device", "progress", "eval_batch_size", "eval_cycle", "paths", "run_dir", "resume",
                         "analysis")


def config_from_run_folder(hydra_cfg: DictConfig) -> DictConfig:
    """The run folder's own config.yaml, so `scripts/evaluate.py run_dir=X` needs no other override."""
    saved = Path(hydra_cfg.paths.output_dir) / "config.yaml"
    if not saved.is_file():
        raise ArtifactError(f"run_dir={hydra_cfg.paths.output_dir} holds no config.yaml; give a run folder made by scripts/train_cycle.py")
    cfg = OmegaConf.load(saved)
    for key in COMMAND_LINE_SETTINGS:
        cfg[key] = hydra_cfg[key]
    return cfg


def run_task(hydra_cfg: DictConfig, task: Task, preflight: Optional[Task] = None, from_run_folder: bool = False) -> Any:
    try:
        if from_run_folder:
            hydra_cfg = config_from_run_folder(hydra_cfg)
        cfg = parse_config(hydra_cfg)
        accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
        cfg.paths.output_dir = shared_output_dir(cfg.paths.output_dir, accelerator)
        ctx = RunContext(cfg, accelerator)
        check_resumable(ctx.layout, cfg)
        ctx.splits  # data problems surface here, before anything is written
        if preflight is not None:
            preflight(ctx)
        if accelerator.is_main_process:
            ctx.remove_stale_temporaries()
            ctx.save_config()
        log.info("run folder: %s (device %s)", ctx.layout.root, accelerator.device)
        ctx.tracker = Tracker(cfg.wandb, ctx.layout.root, config=asdict(cfg)) if accelerator.is_main_process else None
        exit_code = 1
        try:
            result = task(ctx)
            exit_code = 0
            return result
        finally:  # wandb is closed even when the task fails
            if ctx.tracker is not None:
                ctx.tracker.finish(exit_code)
    except SAECeptionError as ex:
        log.error("error: %s", ex)
        sys.exit(2)

