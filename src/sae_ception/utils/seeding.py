"""Per-stage seeds: each stage seeds itself from (seed, cycle, stage), so resumed runs match uninterrupted ones; with
several processes, each process's own stream for dropout during classifier training (`seed_process_stream`)."""

import random
import zlib

import numpy as np
import torch

STAGE_IDS = {"data": 0, "baseline": 1, "sae": 2, "evaluate": 3, "sharpen": 4, "auxiliary": 5, "model_a": 6, "model_b": 7,
             "transfer": 8, "sae_a": 9, "sae_b": 10, "sae_a_ceiling": 11, "sae_b_ceiling": 12, "mapping": 13}


def stage_seed(seed: int, cycle: int, stage: str) -> int:
    """A well-mixed 31-bit seed, independent of which stages ran before in this process."""
    return int(np.random.SeedSequence([seed, cycle, STAGE_IDS[stage]]).generate_state(1)[0] & 0x7FFFFFFF)


def keyed_seed(seed: int, cycle: int, stage: str, key: str) -> int:
    """`stage_seed` of one named item of a stage (e.g. the mapping `procrustes.codes.a_to_b`): independent of the
    others and of their order (the key's CRC32 enters the seed sequence)."""
    return int(np.random.SeedSequence([stage_seed(seed, cycle, stage), zlib.crc32(key.encode())])
               .generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch Generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def process_seed(seed: int, rank: int) -> int:
    """Rank `rank`'s own 31-bit seed derived from `seed` (a stage seed), well mixed and distinct per rank; rank 0's
    is `seed` itself. Raises ValueError for a negative rank."""
    if rank < 0:
        raise ValueError(f"process_seed needs a rank >= 0 (got {rank})")
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_process_stream(seed: int, rank: int, world_size: int) -> None:
    """With several processes, give each one its own stream of torch's global generator (CPU and every CUDA
    device: dropout masks), so processes computing different rows of one batch draw independent masks. Rank 0,
    and a lone process, keep the stream exactly as it is (one process's numbers do not change); rank r > 0 is
    reseeded with `process_seed(seed, r)`. Call it after the model is initialised (initialisation must be the
    same on every process) and before training."""
    if world_size > 1 and rank > 0:
        torch.manual_seed(process_seed(seed, rank))


def rejoin_main_stream(accelerator) -> None:
    """Every process takes rank 0's state of torch's global generator (CPU, and the current CUDA device's on GPUs),
    undoing `seed_process_stream` so that whatever runs next draws the same numbers on every process. A collective:
    every process must call it."""
    from accelerate.utils import synchronize_rng_states

    synchronize_rng_states(["torch", "cuda"] if accelerator.device.type == "cuda" else ["torch"])
