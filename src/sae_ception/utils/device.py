"""One `accelerate.Accelerator` per task: CPU here, CUDA or several GPUs (`accelerate launch`) elsewhere."""

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from sae_ception.errors import ConfigError


def launched_processes() -> int:
    """Processes started by `accelerate launch` / torchrun (1 for a plain `python` run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(device: str, mixed_precision: str) -> Accelerator:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision != "no" and on_cpu:
        # bf16 autocast on CPU depends on the CPU's AMX/AVX512-BF16 support and can kill the process
        # with an illegal instruction (seen on a VM that advertises both); it is for GPUs here.
        raise ConfigError(f"mixed_precision={mixed_precision} needs a CUDA device; use mixed_precision=no on CPU")
    if launched_processes() == 1:
        # accelerate keeps one global state per process; jobs of a --multirun sweep (same process) may
        # ask for another device or precision, so each task starts from a clean state.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
