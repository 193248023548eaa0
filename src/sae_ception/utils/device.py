"""One `accelerate.Accelerator` per process: CPU here, CUDA or several GPUs (`accelerate launch`) elsewhere."""

import torch
from accelerate import Accelerator

from sae_ception.errors import ConfigError


def make_accelerator(device: str, mixed_precision: str) -> Accelerator:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision == "fp16" and on_cpu:
        raise ConfigError("mixed_precision=fp16 needs a CUDA device; use mixed_precision=no or bf16 on CPU")
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
