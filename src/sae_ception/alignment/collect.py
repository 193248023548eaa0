"""Each side's activations at its layer, computed once per run and kept on disk (memory-mapped .npy, written a
batch at a time): `activations/a` and `activations/b`, with the same rows in the same order on both sides.

- `align.level=example`: one row per image or text, the model's own per-example activation (a transformer's
  pooling), written by the product's `collect_activations` (which also keeps each split's logits).
- `align.level=word`: one row per word both tokenizers cover (words.py): each side's row is the mean of its
  tokens' block outputs over the word's characters, so two models with different tokenizers get paired rows.

Each folder records what made it (`made_with`: the model's weight digest, its layer, the level, the rows); a
folder made otherwise (another model behind a run folder's last cycle, a changed level) is computed again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from sae_ception.activations import (SPLITS, _new_memmap, collect_activations, load_activations,
                                     manifest_says_finite, write_manifest)
from sae_ception.alignment.words import pair_words, tokenize_with_offsets, word_means
from sae_ception.errors import ArtifactError, DivergenceError
from sae_ception.models.hooks import capture_output
from sae_ception.utils.digest import state_digest
from sae_ception.utils.io import atomic_dir, write_json

log = logging.getLogger(__name__)

MADE_WITH = "made_with.json"
BLOCK = 65536  # rows read at once when finiteness must be checked again


def made_with(source, model, level: str, rows: dict[str, int]) -> dict:
    """What a side's activations depend on: the model's exact weights, the block read, the level and the rows."""
    return {"model": state_digest(model), "layer": source.layer, "level": level, "rows": rows}


def recorded(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MADE_WITH).read_text())
    except (OSError, ValueError):
        return None


def usable(folder: Path, expected: dict) -> bool:
    """The folder holds complete activations made exactly as `expected` says (else it is recomputed)."""
    if recorded(folder) != expected:
        return False
    try:
        load_activations(folder)
    except (OSError, ValueError, EOFError):
        return False
    return True


def example_activations(folder: Path, source, model, splits, accelerator, batch_size: int) -> dict:
    """`align.level=example`: the side's per-example activations of every split (computed unless usable)."""
    expected = made_with(source, model, "example", {name: len(getattr(splits, name).y) for name in SPLITS})
    if usable(folder, expected):
        log.info("model %s: found its activations in %s (resume)", source.side.upper(), folder)
    else:
        log.info("model %s: activations of layer %d on every split", source.side.upper(), source.layer)
        collect_activations(model, splits, accelerator, batch_size, folder)
        write_json(folder / MADE_WITH, expected)
    return _checked(folder, source)


def _checked(folder: Path, source) -> dict:
    """The folder's activations, refused when a value is not finite: as its manifest recorded while they were
    written (activations.write_manifest), or, when a file changed since, read again in blocks."""
    acts = load_activations(folder)
    finite = manifest_says_finite(folder)
    if finite is None:
        finite = all(bool(torch.isfinite(split.acts_ND[start:start + BLOCK]).all())
                     for split in acts.values() for start in range(0, len(split.acts_ND), BLOCK))
    if not finite:
        raise DivergenceError(f"model {source.side.upper()} gives non-finite activations at layer {source.layer} "
                              f"({folder}); it diverged, or does not fit this data")
    return acts


@torch.no_grad()
def _write_side_words(model, tokens: dict, pairing, groups, folder: Path, name: str, batch_size: int, device) -> bool:
    """One split of one side: each kept word's mean token activation, a batch of texts at a time. Returns whether
    every value written is finite."""
    finite = True
    n_texts = len(tokens["input_ids"])
    acts = _new_memmap(folder / f"{name}.acts.npy", np.float32, (len(pairing), model.target_width()))
    text_index = pairing.text_index
    starts = torch.searchsorted(text_index, torch.arange(n_texts + 1))  # words of text t: starts[t]:starts[t+1]
    with capture_output(model.target_module()) as captured:
        for first in range(0, n_texts, batch_size):
            last = min(first + batch_size, n_texts)
            lo, hi = int(starts[first]), int(starts[last])
            if lo == hi:
                continue
            batch = {k: v[first:last].to(device) for k, v in tokens.items()}
            model(batch)
            hidden = captured["acts"].float().cpu()
            rows = (text_index[lo:hi] - first).tolist()
            means = word_means(hidden, groups[lo:hi], rows).numpy()
            finite &= bool(np.isfinite(means).all())
            acts[lo:hi] = means
    acts.flush()
    return finite


def word_activations(folders: dict[str, Path], sources: dict, models: dict, texts: dict[str, list[str]],
                     labels: dict[str, torch.Tensor], tokenizers: dict, max_length: int, batch_size: int,
                     device) -> dict[str, dict]:
    """`align.level=word`: both sides' word rows of every split (paired through characters; computed unless usable).
    Returns {side: {split: SplitActivations}} whose rows are the same words on both sides."""
    tokens, pairings = {}, {}
    for name in SPLITS:
        offsets = {}
        for side in ("a", "b"):
            tokens[side, name], offsets[side] = tokenize_with_offsets(tokenizers[side], texts[name], max_length)
        pairings[name] = pair_words(texts[name], offsets["a"], offsets["b"])
        if len(pairings[name]) == 0 and len(texts[name]):
            raise ArtifactError(f"align.level=word: no word of the {name} split is covered by both tokenizers; "
                                "use align.level=example")
    rows = {name: len(p) for name, p in pairings.items()}
    out = {}
    for side in ("a", "b"):
        folder, model = folders[side], models[side].to(device).eval()
        expected = made_with(sources[side], model, "word", rows)
        if usable(folder, expected):
            log.info("model %s: found its word activations in %s (resume)", side.upper(), folder)
        else:
            log.info("model %s: word activations of layer %d (%s words)", side.upper(), sources[side].layer,
                     " / ".join(f"{rows[n]} {n}" for n in SPLITS))
            with atomic_dir(folder) as tmp:
                finite = True
                for name in SPLITS:
                    pairing = pairings[name]
                    groups = pairing.groups_a if side == "a" else pairing.groups_b
                    finite &= _write_side_words(model, tokens[side, name], pairing, groups, tmp, name, batch_size,
                                                device)
                    np.save(tmp / f"{name}.labels.npy", labels[name][pairing.text_index].numpy())
                    np.save(tmp / f"{name}.logits.npy", np.zeros((len(pairing), 0), np.float32))
                    np.save(tmp / f"{name}.text_index.npy", pairing.text_index.numpy())
                    np.save(tmp / f"{name}.word_spans.npy", pairing.spans.numpy())
                write_manifest(tmp, finite)
                write_json(tmp / MADE_WITH, expected)
        out[side] = _checked(folder, sources[side])
        models[side].cpu()
    return out
