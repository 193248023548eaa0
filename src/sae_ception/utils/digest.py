"""A fingerprint of a module's weights: which exact weights a result or an artifact was made with."""

from __future__ import annotations

import hashlib
import json

import torch


def value_digest(value) -> str:
    """A short fingerprint (16 hex digits of SHA-256) of a JSON-able value, keys sorted: equal settings, equal digest."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 (hex) over the module's state_dict: every key and every tensor's bytes, in order. Equal digests
    mean bit-identical weights (and buffers)."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
