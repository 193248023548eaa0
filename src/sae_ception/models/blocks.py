"""The one place that knows where a Hugging Face model keeps its transformer blocks.

Every stage reads and splices activations through hooks on a block's output (the residual stream after
that block), so supporting a new architecture family means adding its attribute path here, nothing else.
"""

from __future__ import annotations

from torch import nn

# Attribute paths of the block list, on the bare model (AutoModel) or on a model with a head around it.
BLOCK_PATHS = (
    "h",  # GPT-2, GPT-J, Falcon
    "layers",  # GPT-NeoX / Pythia, LLaMA, Mistral, Qwen
    "encoder.layer",  # BERT, RoBERTa, MiniLM, ELECTRA
    "transformer.layer",  # DistilBERT
    "decoder.layers",  # OPT
    "transformer.h", "gpt_neox.layers", "model.layers", "bert.encoder.layer",
)


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (a known path, else its longest ModuleList)."""
    for path in BLOCK_PATHS:
        found = _get(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of blocks to hook; add its attribute path to BLOCK_PATHS")
    return max(lists, key=len)


def block_count(hf_config) -> int:
    """Number of blocks from a Hugging Face config, without building the model."""
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell how many blocks a {type(hf_config).__name__} has")


def names_below_block(model: nn.Module, blocks: nn.ModuleList, index: int) -> set[str]:
    """Parameter names computed before block `index` reads its input: the embeddings (registered before the
    block list in every family) and blocks 0..index-1. Freezing these is the reference's auxiliary setting."""
    block_params = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    below, seen_blocks = set(), False
    for name, param in model.named_parameters():
        position = block_params.get(id(param))
        if position is not None:
            seen_blocks = True
            if position < index:
                below.add(name)
        elif not seen_blocks:
            below.add(name)
    return below
