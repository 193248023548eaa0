"""What every classifier must offer the pipeline: where the target activation lives, how to read and splice
it, and how to rebuild the model from a checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.models.blocks import names_below_block
from sae_ception.models.hooks import capture_output, replace_output
from sae_ception.registry import Registry

MODELS: Registry = Registry("model", "model.name")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class ModelConfig:
    """Architecture plus the baseline's training schedule (cycle 0; auxiliary retraining reuses the schedule)."""

    name: str = "mlp"
    epochs: int = 30  # baseline training epochs
    batch_size: int = 64  # examples per optimiser step (across gradient accumulation and over all processes)
    lr: float = 1e-3
    weight_decay: float = 0.0
    keep_best: bool = True  # keep the epoch with the best validation accuracy (else the last)
    lr_schedule: str = "constant"  # constant | linear (decay to 0) | cosine, after the warmup
    warmup_ratio: float = 0.0  # fraction of the optimiser steps spent ramping the LR up from 0
    max_grad_norm: Optional[float] = None  # clip the global gradient norm (None: no clipping)
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size / this many examples per step
    group_by_length: bool = False  # text: batches of similar-length examples (less padding), as HF's Trainer

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"model.epochs={self.epochs} must be a positive integer (baseline training epochs)")
        if self.batch_size <= 0:
            raise ConfigError(f"model.batch_size={self.batch_size} must be a positive integer")
        if self.lr <= 0:
            raise ConfigError(f"model.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"model.weight_decay={self.weight_decay} must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"model.lr_schedule={self.lr_schedule!r} is not valid; use one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"model.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"model.max_grad_norm={self.max_grad_norm} must be > 0 (or null for no clipping)")
        accumulation = self.gradient_accumulation_steps
        if accumulation <= 0 or self.batch_size % accumulation:
            raise ConfigError(f"model.gradient_accumulation_steps={accumulation} must be a positive divisor of "
                              f"model.batch_size={self.batch_size}")

    def target_width(self) -> int:
        """Width of the target activation (the SAE's input size); may read the pretrained model's config."""
        raise NotImplementedError


class Classifier(nn.Module):
    """A classifier whose target activation SAE-ception reads and sharpens.

    Subclasses say which blocks hold it (`block_list`; `cfg.target_layer` picks one), how a block's output
    becomes the per-example activation the SAE and auxiliary loss see (`per_example`; `per_token` for a
    token-level SAE), and how a new activation is written back (`splice`). Transformers pool tokens here; the MLP's output is already per example.
    """

    config_class = ModelConfig

    def block_list(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def target_index(self) -> int:
        return self.cfg.target_layer % len(self.block_list())

    def target_module(self) -> nn.Module:
        return self.block_list()[self.target_index]

    def target_width(self) -> int:
        return self.cfg.target_width()

    def build_meta(self) -> dict:
        """What `build_model` needs to rebuild this exact architecture from a checkpoint."""
        raise NotImplementedError

    def names_below_target(self) -> set[str]:
        """Parameters that only feed the target layer (embeddings and earlier blocks), for `cycle.trainable=[from_target]`."""
        return names_below_block(self, self.block_list(), self.target_index)

    @classmethod
    def prepare_splits(cls, model_cfg, dataset_cfg, splits, cache_dir=None, write_cache: bool = True):
        """Turn a dataset's splits into this model's inputs (the MLP reads feature vectors as they are)."""
        return splits

    # --- the target activation ------------------------------------------------------------------------
    def per_example(self, output: torch.Tensor) -> torch.Tensor:
        """The target module's output as one row per example (B, D): what the SAE-ception loss aligns."""
        return output

    def per_token(self, output: torch.Tensor) -> torch.Tensor:
        """The target module's output as the rows a token-level SAE trains on (non-padding tokens)."""
        return output

    def splice(self, output: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], token_level: bool) -> torch.Tensor:
        """The target module's output with its per-example (or per-token) activation replaced by `fn` of it."""
        return fn(output)

    @torch.no_grad()
    def logits_of(self, inputs, batch_size: int, device, autocast=contextlib.nullcontext) -> torch.Tensor:
        """(N, C) logits of a whole split on the CPU, in data order (batches are visited longest text first)."""
        from sae_ception.utils.batching import inference_batches, num_rows, to_device

        self.eval()
        out = torch.zeros(num_rows(inputs), getattr(self, "num_classes", 0))
        for rows, batch in inference_batches(inputs, batch_size):
            with autocast():
                out[rows] = self(to_device(batch, device)).float().cpu()
        return out

    @contextlib.contextmanager
    def capture_target(self) -> Iterator["TargetCapture"]:
        """Inside the block, `.acts` / `.tokens` give the latest forward's target activation (graph kept,
        for the auxiliary loss)."""
        with capture_output(self.target_module()) as raw:
            yield TargetCapture(self, raw)

    @contextlib.contextmanager
    def splice_target(self, fn: Callable[[torch.Tensor], torch.Tensor], token_level: bool = False) -> Iterator[None]:
        """Inside the block, the target activation is replaced by `fn(activation)` (e.g. an SAE reconstruction)."""
        with replace_output(self.target_module(), lambda output: self.splice(output, fn, token_level)):
            yield


class TargetCapture:
    """The captured output of the target module, viewed per example or per token on demand."""

    def __init__(self, model: Classifier, raw: dict):
        self._model, self._raw = model, raw

    @property
    def acts(self) -> torch.Tensor:
        return self._model.per_example(self._raw["acts"])

    @property
    def tokens(self) -> torch.Tensor:
        return self._model.per_token(self._raw["acts"])
