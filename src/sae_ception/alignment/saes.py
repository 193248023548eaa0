"""Each side's SAE on its training rows (the product's SAE trainer), and a second one per side from another seed
on the same rows: the same-model ceiling (how well a mapping can do between two dictionaries of ONE model).

Checkpoints: checkpoints/sae_a, sae_b (or a run folder's SAE with `align.sae_from_run`), sae_a_ceiling,
sae_b_ceiling; each records what it was trained on (the activations' `made_with`, its settings and seed) and is
trained again when that changed. Codes of every split are written memory-mapped under codes/<name>/.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sae_ception.activations import SPLITS, _new_memmap
from sae_ception.sae import SAEConfig
from sae_ception.sae.base import SparseAutoencoder, build_sae, frozen, load_sae
from sae_ception.sae.trainer import train_sae
from sae_ception.utils.io import META_FILE, atomic_dir, checkpoint_exists, read_json

log = logging.getLogger(__name__)

ENCODE_ROWS = 4096  # rows encoded at once


def _expected(sae_cfg: SAEConfig, acts_made_with: dict, seed: int) -> dict:
    return {"sae": asdict(sae_cfg), "activations": acts_made_with, "seed": seed}


def side_sae(run, name: str, sae_cfg: SAEConfig, train_ND: torch.Tensor, acts_made_with: dict, seed: int
             ) -> tuple[SparseAutoencoder, dict]:
    """The SAE `checkpoints/<name>` trained on `train_ND` with `sae_cfg` and `seed` (read back when it was made
    exactly so). Returns (SAE frozen on the CPU, its training stats)."""
    path = run.layout.root / "checkpoints" / name
    expected = _expected(sae_cfg, acts_made_with, seed)
    if checkpoint_exists(path):
        meta = read_json(path / META_FILE, f"delete {path} to have it trained again")
        extra = meta.get("extra") or {}
        if extra.get("made_with") == expected:
            log.info("%s: found %s, skipping (resume)", name, path)
            return frozen(load_sae(path)), extra["training"]
        log.info("%s: %s was trained on other rows or settings; training it again", name, path)
    torch.manual_seed(seed)
    sae = build_sae(sae_cfg, d_in=train_ND.shape[1])
    log.info("%s: training a %s SAE %d -> %d on %d rows", name, sae_cfg.type, sae.d_in, sae.d_sae, len(train_ND))
    stats = train_sae(sae, train_ND, sae_cfg, accelerator=run.accelerator, seed=seed, log_fn=run.log_fn(name),
                      show_progress=run.cfg.progress, what=f"SAE training of {name}")
    sae.save(path, extra={"made_with": expected, "training": stats})
    return frozen(sae), stats


def run_sae(path: Path) -> tuple[SparseAutoencoder, dict]:
    """A run folder's SAE (`align.sae_from_run`), frozen, with its recorded training stats (empty when none)."""
    meta = read_json(path / META_FILE, f"restore {path}, or set align.sae_from_run=false")
    return frozen(load_sae(path)), (meta.get("extra") or {}).get("training", {})


@torch.no_grad()
def write_codes(sae: SparseAutoencoder, acts: dict, folder: Path) -> dict[str, torch.Tensor]:
    """Codes (N, F) of every split's rows, written memory-mapped into `folder` (atomically) and mapped back."""
    with atomic_dir(folder) as tmp:
        for split in SPLITS:
            rows = acts[split].acts_ND
            codes = _new_memmap(tmp / f"{split}.npy", np.float32, (len(rows), sae.d_sae))
            for start in range(0, len(rows), ENCODE_ROWS):
                codes[start:start + ENCODE_ROWS] = sae.encode(rows[start:start + ENCODE_ROWS].float()).numpy()
            codes.flush()
    return {split: torch.from_numpy(np.load(folder / f"{split}.npy", mmap_mode="c")) for split in SPLITS}


@torch.no_grad()
def decode_rows(sae: SparseAutoencoder, codes_NF: torch.Tensor) -> torch.Tensor:
    """Raw-space reconstructions (N, D) of codes, a chunk at a time."""
    return torch.cat([sae.decode(codes_NF[s:s + ENCODE_ROWS].float()) for s in range(0, len(codes_NF), ENCODE_ROWS)])
