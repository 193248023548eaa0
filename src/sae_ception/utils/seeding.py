"""Per-stage seeds: each stage seeds itself from (seed, cycle, stage), so resumed runs match uninterrupted ones."""

import random

import numpy as np
import torch

STAGE_IDS = {"data": 0, "baseline": 1, "sae": 2, "evaluate": 3, "sharpen": 4, "auxiliary": 5}


def stage_seed(seed: int, cycle: int, stage: str) -> int:
    """A well-mixed 31-bit seed, independent of which stages ran before in this process."""
    return int(np.random.SeedSequence([seed, cycle, STAGE_IDS[stage]]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch Generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
