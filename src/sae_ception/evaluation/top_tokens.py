"""Text features: the tokens of a split where each feature fires most strongly, with the tokens around them.

One pass of the model over the split captures the target layer at every non-padding token; the SAE encodes
those rows (pooled and token-level SAEs read the same activation space) and a running top-k per feature keeps
each hit's example, position and the feature's activations on its context window. Only one batch of codes,
restricted to the analysed features, is ever held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sae_ception.models import Classifier
from sae_ception.utils.batching import inference_batches, to_device


@dataclass
class TokenHits:
    """The k strongest token activations of each of S features (K <= k rows, best first; -inf: no hit)."""

    values_KS: torch.Tensor
    examples_KS: torch.Tensor  # row of the split
    positions_KS: torch.Tensor  # token position in that row
    windows_KSW: torch.Tensor  # the feature's activation at positions - window .. positions + window


class RunningTopTokens:
    """Keeps the k largest activations per feature over batches of (B, L, S) token codes."""

    def __init__(self, num_features: int, k: int, window: int):
        self.k, self.window = k, window
        none_KS = torch.zeros(0, num_features, dtype=torch.long)
        self.hits = TokenHits(none_KS.float(), none_KS, none_KS, torch.zeros(0, num_features, 2 * window + 1))

    def update(self, codes_BLS: torch.Tensor, mask_BL: torch.Tensor, rows_B: torch.Tensor) -> None:
        """Merge one batch: codes of padding positions (mask False) are never kept."""
        B, L, S = codes_BLS.shape
        flat_NS = codes_BLS.reshape(B * L, S).masked_fill(~mask_BL.reshape(B * L, 1), float("-inf"))
        values_KS, cells_KS = flat_NS.topk(min(self.k, B * L), dim=0)
        b_KS, t_KS = cells_KS // L, cells_KS % L
        positions_KSW = t_KS[..., None] + torch.arange(-self.window, self.window + 1)
        inside_KSW = (positions_KSW >= 0) & (positions_KSW < L)
        clamped_KSW = positions_KSW.clamp(0, L - 1)
        feature_KSW = torch.arange(S)[None, :, None].expand_as(clamped_KSW)
        windows_KSW = codes_BLS[b_KS[..., None].expand_as(clamped_KSW), clamped_KSW, feature_KSW] * inside_KSW
        candidates = TokenHits(values_KS, rows_B[b_KS], t_KS, windows_KSW)
        self.hits = self._best(self.hits, candidates)

    def _best(self, a: TokenHits, b: TokenHits) -> TokenHits:
        values_KS = torch.cat([a.values_KS, b.values_KS])
        best_values_KS, order_KS = values_KS.topk(min(self.k, len(values_KS)), dim=0)

        def pick(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            both = torch.cat([x, y])
            index = order_KS if both.ndim == 2 else order_KS[..., None].expand(-1, -1, both.shape[2])
            return both.gather(0, index)

        return TokenHits(best_values_KS, pick(a.examples_KS, b.examples_KS), pick(a.positions_KS, b.positions_KS),
                         pick(a.windows_KSW, b.windows_KSW))


@torch.no_grad()
def top_activating_tokens(model: Classifier, sae, inputs: dict[str, torch.Tensor], features: torch.Tensor, k: int,
                          window: int, batch_size: int = 64, device: str | torch.device = "cpu",
                          encode_rows: int = 4096) -> TokenHits:
    """The k strongest (non-padding) tokens of `inputs` for each feature, in one pass of the model."""
    model = model.to(device).eval()
    sae = sae.to(device).eval()
    features = features.to(device)
    running = RunningTopTokens(len(features), k, window)
    with model.capture_target() as captured:
        for rows_B, batch in inference_batches(inputs, batch_size):
            model(to_device(batch, device))
            tokens_TD = captured.tokens.float()
            chunks = tokens_TD.split(encode_rows)  # bounds the (rows, d_sae) codes held at once
            codes_TS = torch.cat([sae.encode(chunk)[:, features].float().cpu() for chunk in chunks])
            mask_BL = batch["attention_mask"].bool()  # right padding: a row's real tokens come first
            mask_BL = mask_BL[:, :int(mask_BL.sum(1).max())]
            codes_BLS = torch.zeros(*mask_BL.shape, len(features))
            codes_BLS[mask_BL] = codes_TS
            running.update(codes_BLS, mask_BL, rows_B)
    return running.hits


def describe_top_tokens(hits: TokenHits, inputs: dict[str, torch.Tensor], labels_N: torch.Tensor,
                        decode: Callable[[list[int]], list[str]]) -> list[list[dict]]:
    """Per feature, its hits where it fires (> 0): the token's text, activation, example index and label, and
    the context window (tokens, the feature's activation on each, and where the hit sits in it)."""
    ids_NL, mask_NL = inputs["input_ids"], inputs["attention_mask"].bool()
    width = hits.windows_KSW.shape[2]
    window = width // 2
    positions_KSW = hits.positions_KS[..., None] + torch.arange(-window, window + 1)
    inside_KSW = (positions_KSW >= 0) & (positions_KSW < ids_NL.shape[1])
    clamped_KSW = positions_KSW.clamp(0, ids_NL.shape[1] - 1)
    examples_KSW = hits.examples_KS[..., None].expand_as(clamped_KSW)
    real_KSW = inside_KSW & mask_NL[examples_KSW, clamped_KSW]
    context_ids_KSW = ids_NL[examples_KSW, clamped_KSW]
    unique_ids = context_ids_KSW[real_KSW].unique().tolist()
    text = dict(zip(unique_ids, decode(unique_ids)))
    described: list[list[dict]] = [[] for _ in range(hits.values_KS.shape[1])]
    for k, column in (hits.values_KS > 0).nonzero().tolist():
        real = real_KSW[k, column]
        context = [text[i] for i in context_ids_KSW[k, column][real].tolist()]
        example = int(hits.examples_KS[k, column])
        described[column].append({
            "token": text[int(context_ids_KSW[k, column, window])],
            "activation": float(hits.values_KS[k, column]),
            "index": example,
            "position": int(hits.positions_KS[k, column]),
            "label": int(labels_N[example]),
            "context_tokens": context,
            "context_activations": hits.windows_KSW[k, column][real].tolist(),
            "token_in_context": int(real[:window].sum()),
        })
    return described
