"""Target-layer activations of one model on every split, computed once per cycle and cached on disk.

SAE training (train split), sharpening (train split) and evaluation (test split) all read this cache;
the logits recorded in the same pass give task accuracy without another scan of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from sae_ception.data import DataSplits
from sae_ception.models import Classifier, capture_output
from sae_ception.utils.io import load_tensors, save_tensors

SPLITS = ("train", "val", "test")


@dataclass
class SplitActivations:
    acts_ND: torch.Tensor
    labels_N: torch.Tensor
    logits_NC: torch.Tensor


@torch.no_grad()
def collect_split(model: Classifier, x: torch.Tensor, y: torch.Tensor, accelerator: Accelerator, batch_size: int) -> SplitActivations:
    model.eval()
    acts, logits = [], []
    with capture_output(model.target_module()) as captured:
        for xb in x.split(batch_size):
            with accelerator.autocast():
                logits.append(model(xb.to(accelerator.device)).float().cpu())
            acts.append(captured["acts"].float().cpu())
    return SplitActivations(torch.cat(acts), y.clone(), torch.cat(logits))


def collect_activations(model: Classifier, splits: DataSplits, accelerator: Accelerator, batch_size: int) -> dict[str, SplitActivations]:
    model = model.to(accelerator.device)
    return {name: collect_split(model, getattr(splits, name).x, getattr(splits, name).y, accelerator, batch_size) for name in SPLITS}


def save_activations(path: Path, activations: dict[str, SplitActivations]) -> None:
    tensors = {}
    for name, split in activations.items():
        tensors |= {f"{name}.acts": split.acts_ND, f"{name}.labels": split.labels_N, f"{name}.logits": split.logits_NC}
    save_tensors(path, tensors)


def load_activations(path: Path) -> dict[str, SplitActivations]:
    tensors = load_tensors(path)
    return {
        name: SplitActivations(tensors[f"{name}.acts"], tensors[f"{name}.labels"], tensors[f"{name}.logits"])
        for name in SPLITS
    }
