"""One `accelerate.Accelerator` per task: CPU here, CUDA or several GPUs (`accelerate launch`) elsewhere."""

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from sae_ception.errors import ConfigError


def launched_processes() -> int:
    """Processes started by `accelerate launch` / torchrun (1 for a plain `python` run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def processes_on_this_machine() -> int:
    """Processes of this run sharing the machine's CPUs: `accelerate launch`/torchrun ranks on this node, times the
    jobs a parallel Hydra launcher runs at once (`hydra/launcher=joblib hydra.launcher.n_jobs=N`)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            n_jobs = HydraConfig.get().launcher.get("n_jobs")
            if isinstance(n_jobs, int) and n_jobs > 1:
                local *= n_jobs
    except Exception:  # noqa: BLE001 - no Hydra, or a launcher without n_jobs: one job at a time
        pass
    return max(1, local)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(setting: str) -> int:
    """Set torch's CPU threads for this process and return the number. `auto`: the CPUs this process may use
    divided by the processes sharing them (see `processes_on_this_machine`), or OMP_NUM_THREADS when the user
    set it; a number: exactly that. More threads than cores makes every process far slower, not faster."""
    if setting == "auto":
        threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() \
            else usable_cpus() // processes_on_this_machine()
    else:
        threads = int(setting)
    threads = max(1, threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


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
