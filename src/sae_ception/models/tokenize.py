"""Tokenise a text dataset's splits once per run and cache the token tensors in the run folder.

The cache is keyed by the tokenizer, the max length and a hash of the texts, so a resumed run or a
stage script on the same folder skips tokenisation, and any change makes a fresh cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from sae_ception.data.base import DataSplits, Split
from sae_ception.errors import ArtifactError
from sae_ception.models.pretrained import load_tokenizer, resolve_source
from sae_ception.utils.io import load_tensors, save_tensors

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _fingerprint(pretrained: str, max_length: int, splits: DataSplits) -> str:
    digest = hashlib.sha256(json.dumps([resolve_source(pretrained), max_length]).encode())
    for name in SPLITS:
        for text in getattr(splits, name).x:
            digest.update(text.encode("utf-8", "replace") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def tokenize_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (N, L), padded on the right to the longest text (at most max_length)."""
    if not texts:
        return {"input_ids": torch.zeros(0, 1, dtype=torch.long), "attention_mask": torch.zeros(0, 1, dtype=torch.long)}
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text as a reader sees it (`good`, `##ing`, ` the`), for feature reports."""
    return tokenizer.batch_decode([[i] for i in ids])


def _cached_tokens(path: Path, splits: DataSplits) -> Optional[dict[str, torch.Tensor]]:
    """The cached token tensors, or None (with a warning) when the file is damaged or does not fit the splits:
    a cache is recomputed, never trusted blindly."""
    try:
        tensors = load_tensors(path)
    except ArtifactError as ex:
        log.warning("tokens: %s; tokenising again", str(ex).split("; ")[0])
        return None
    for name in SPLITS:
        n = len(getattr(splits, name).y)
        shapes = [tuple(tensors[f"{name}.{field}"].shape) if f"{name}.{field}" in tensors else None
                  for field in ("input_ids", "attention_mask")]
        if shapes[0] is None or shapes[0] != shapes[1] or shapes[0][0] != n:
            log.warning("tokens: %s does not fit the %s split (%d examples); tokenising again", path, name, n)
            return None
    return tensors


def tokenize_splits(splits: DataSplits, pretrained: str, max_length: int, cache_dir: Optional[Path],
                    write_cache: bool = True) -> DataSplits:
    key = _fingerprint(pretrained, max_length, splits)
    path = Path(cache_dir) / f"tokens_{key}.safetensors" if cache_dir is not None else None
    tensors = _cached_tokens(path, splits) if path is not None and path.is_file() else None
    if tensors is not None:
        log.info("tokens: reusing %s", path)
    else:
        tokenizer = load_tokenizer(pretrained)
        tensors = {}
        for name in SPLITS:
            for field, value in tokenize_texts(tokenizer, getattr(splits, name).x, max_length).items():
                tensors[f"{name}.{field}"] = value
        if path is not None and write_cache:
            save_tensors(path, tensors)
        truncated = int((tensors["train.attention_mask"].sum(1) >= max_length).sum())
        log.info("tokenised %s with %s (max_length %d; %d training texts truncated)",
                 " / ".join(f"{len(getattr(splits, n).y)} {n}" for n in SPLITS), pretrained, max_length, truncated)

    def split(name: str) -> Split:
        inputs = {field: tensors[f"{name}.{field}"] for field in ("input_ids", "attention_mask")}
        return Split(x=inputs, y=getattr(splits, name).y)

    return replace(splits, train=split("train"), val=split("val"), test=split("test"))
