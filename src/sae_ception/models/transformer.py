"""A Hugging Face transformer with a linear classification head on its pooled final hidden state.

One class serves every family (GPT-2, GPT-NeoX/Pythia, LLaMA, BERT/MiniLM): the blocks are found in
models/blocks.py, and the target activation is a block's residual output pooled the same way the head
pools the final layer (last non-padding token for decoders, CLS or mean for encoders).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.models.base import MODELS, Classifier, ModelConfig
from sae_ception.models.blocks import block_count, find_blocks
from sae_ception.models.pooling import POOLINGS, pool, pooling_weights, shift_pooled, with_a_token_per_row
from sae_ception.models.pretrained import load_backbone, load_hf_config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TransformerConfig(ModelConfig):
    name: str = "transformer"
    pretrained: str = "gpt2"  # hub id, local folder, or package:<module>/<subfolder> (see models/pretrained.py)
    target_layer: int = -1  # block index whose residual output is read; negative counts from the end
    pooling: str = "auto"  # auto (last for decoders, cls for encoders) | last | cls | mean
    head_dropout: float = 0.1
    dtype: str = "float32"  # weights' dtype: float32 | bfloat16 | float16 (mixed_precision is separate)
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% slower
    attn_implementation: Optional[str] = None  # e.g. sdpa, flash_attention_2; None = transformers' default

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("auto", *POOLINGS):
            raise ConfigError(f"model.pooling={self.pooling!r} is not valid; use one of auto, {', '.join(POOLINGS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is not valid; use one of {', '.join(DTYPES)}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"model.head_dropout={self.head_dropout} must be in [0, 1)")

    def target_width(self) -> int:
        """The hidden size, after checking the target layer exists (reads only the pretrained config)."""
        hf_config = load_hf_config(self.pretrained)
        n = block_count(hf_config)
        if not -n <= self.target_layer < n:
            raise ConfigError(f"model.target_layer={self.target_layer} is outside {self.pretrained}'s {n} blocks; "
                              f"use {-n}..{n - 1}")
        return int(hf_config.hidden_size)


def resolve_pooling(pooling: str, hf_config) -> str:
    """`auto`: CLS for encoders (models with a masked-LM head), the last real token for causal decoders."""
    if pooling != "auto":
        return pooling
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "cls" if hf_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last"


@MODELS.register("transformer")
class TransformerClassifier(Classifier):
    config_class = TransformerConfig

    def __init__(self, cfg: TransformerConfig, input_dim: int = 0, num_classes: int = 2, pretrained_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = load_backbone(cfg.pretrained, DTYPES[cfg.dtype], pretrained_weights, cfg.attn_implementation)
        self.pooling = resolve_pooling(cfg.pooling, self.backbone.config)
        self.dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(self.backbone.config.hidden_size, num_classes)
        if cfg.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._mask_BT: Optional[torch.Tensor] = None  # the current batch's, for the hooks
        self._weights_BT: Optional[torch.Tensor] = None

    def block_list(self) -> nn.ModuleList:
        return find_blocks(self.backbone)

    def build_meta(self) -> dict:
        return {"input_dim": 0, "num_classes": self.num_classes}

    def fill_token_id(self) -> int:
        """The id fed to a row that has no column at all: the model's pad, else EOS, else BOS token, else 0."""
        config = self.backbone.config
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(config, key, None)
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if isinstance(value, int) and 0 <= value < getattr(config, "vocab_size", value + 1):
                return value
        return 0

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # prepared inputs give every row a real token already; this keeps direct calls safe too
        ids_BT, mask_BT = with_a_token_per_row(inputs["input_ids"], inputs["attention_mask"], self.fill_token_id())
        length = int(mask_BT.sum(1).max()) if len(mask_BT) else 1  # dynamic padding: drop all-padding columns
        ids_BT, mask_BT = ids_BT[:, :length].long(), mask_BT[:, :length].long()
        self._mask_BT, self._weights_BT = mask_BT, pooling_weights(mask_BT, self.pooling)
        hidden_BTD = self.backbone(input_ids=ids_BT, attention_mask=mask_BT).last_hidden_state
        pooled_BD = pool(hidden_BTD, self._weights_BT)
        return self.head(self.dropout(pooled_BD.to(self.head.weight.dtype)))

    # --- the target activation: a block's residual output, pooled like the head's input -----------------
    def per_example(self, output: torch.Tensor) -> torch.Tensor:
        return pool(output, self._weights_BT)

    def per_token(self, output: torch.Tensor) -> torch.Tensor:
        return output[self._mask_BT.bool()]

    def splice(self, output: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], token_level: bool) -> torch.Tensor:
        if token_level:
            real = self._mask_BT.bool()
            spliced = output.clone()
            spliced[real] = fn(output[real]).to(output.dtype)
            return spliced
        pooled_BD = pool(output, self._weights_BT)
        return shift_pooled(output, self._weights_BT, fn(pooled_BD).to(output.dtype) - pooled_BD)

    @classmethod
    def prepare_splits(cls, model_cfg, dataset_cfg, splits, cache_dir=None, write_cache: bool = True):
        from sae_ception.models.tokenize import tokenize_splits

        if not splits.is_text:
            raise ConfigError(f"model.name=transformer reads text but dataset={dataset_cfg.name} holds feature vectors; "
                              "use model=mlp, or a text dataset (dataset=sst2, ag_news)")
        tokens = tokenize_splits(splits, model_cfg.pretrained, dataset_cfg.max_length, cache_dir, write_cache)
        return give_every_text_a_token(tokens, model_cfg.pretrained)


def give_every_text_a_token(splits, pretrained: str):
    """Splits whose every row has at least one real token (`with_a_token_per_row`), so every consumer of the
    attention mask (batching by length, pooling, token rows, top tokens) sees the same tokens. A text the
    tokenizer turns into nothing (empty, with no BOS/CLS added) stays an example, read as one padding token."""
    from dataclasses import replace

    prepared = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        ids, mask = split.x["input_ids"], split.x["attention_mask"]
        empty_N = mask.sum(1) == 0
        if not bool(empty_N.any()):
            continue
        fill_id = 0
        if ids.shape[1] == 0:  # every text of the split gave no token: no padding column to reuse
            from sae_ception.models.pretrained import load_tokenizer

            fill_id = int(load_tokenizer(pretrained).pad_token_id)
        ids, mask = with_a_token_per_row(ids, mask, fill_id)
        log.warning("%d %s texts give no token with %s's tokenizer (empty texts, as it adds no BOS/CLS token); each is "
                    "read as one padding token (id %d)", int(empty_N.sum()), name, pretrained,
                    int(ids[empty_N][0, 0]))
        prepared[name] = replace(split, x={**split.x, "input_ids": ids, "attention_mask": mask})
    return replace(splits, **prepared) if prepared else splits
