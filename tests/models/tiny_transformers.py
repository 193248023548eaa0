"""Tiny randomly initialised transformers of each supported family, saved to local folders (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("gpt2", "gpt_neox", "llama", "bert")
NUM_BLOCKS, WIDTH, VOCAB = 3, 16, 100


def tiny_config(family: str):
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    common = {"vocab_size": VOCAB}
    if family == "gpt2":
        return GPT2Config(n_layer=NUM_BLOCKS, n_embd=WIDTH, n_head=2, n_positions=64, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(num_hidden_layers=NUM_BLOCKS, hidden_size=WIDTH, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64, **common)
    if family == "llama":
        return LlamaConfig(num_hidden_layers=NUM_BLOCKS, hidden_size=WIDTH, num_attention_heads=2, num_key_value_heads=2,
                           intermediate_size=32, max_position_embeddings=64, **common)
    if family == "bert":
        return BertConfig(num_hidden_layers=NUM_BLOCKS, hidden_size=WIDTH, num_attention_heads=2, intermediate_size=32,
                          max_position_embeddings=64, **common)
    raise ValueError(family)


def save_tiny(family: str, folder: Path) -> Path:
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(family)).save_pretrained(folder)
    return folder


def token_batch(lengths=(5, 3), seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random token ids with the given real lengths."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}
