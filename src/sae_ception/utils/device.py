"""One `accelerate.Accelerator` per task: one process on CPU or CUDA, or several (torchrun / `accelerate launch
--multi_gpu`, on CPU or GPUs); see README "Several processes"."""

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs

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
            if isinstance(n_jobs, int) and n_jobs < 0:  # joblib's convention: -1 = every CPU, -2 = all but one
                n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
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
    from threadpoolctl import threadpool_limits  # numpy's and scipy's BLAS (OpenBLAS, MKL) too: scikit-learn's dependency

    threadpool_limits(limits=threads)
    return threads


# How long a process waits in a collective (a barrier) for the others: the main process alone writes the cached
# activations while every other one waits, which takes longer than torch's default 30 minutes for a large model
# on a large dataset. On one machine a process that dies ends the others at once (torchrun stops the group); on
# several, the others wait in their collective until this timeout.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def make_accelerator(device: str, mixed_precision: str) -> Accelerator:
    """The task's Accelerator. With several processes it joins their process group (gloo on CPU, NCCL on GPUs).
    Raises ConfigError (one line) for device=cuda without a visible CUDA device, for mixed precision on CPU, and
    when accelerate did not join every launched process (WORLD_SIZE) into one group."""
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
    # cpu=on_cpu, not device == "cpu": under torchrun, accelerate without cpu=True on a machine without CUDA
    # starts every process as a lone main process (DistributedType.NO), each writing the same run folder
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=mixed_precision,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])
    if accelerator.num_processes != launched_processes():
        raise ConfigError(f"{launched_processes()} processes were launched but accelerate joined "
                          f"{accelerator.num_processes} (distributed type {accelerator.distributed_type.value}); "
                          "launch with torchrun or `accelerate launch --multi_gpu` (README: Several processes)")
    return accelerator
