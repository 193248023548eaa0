"""Pair two models' token activations across different tokenizers through the words their tokens cover.

Two tokenizers cut the same text differently (`un ##believ ##able` against `Unbel ievable`), so token rows
cannot be paired directly. The common unit is the word: `WORD_PATTERN` (`\\w+|[^\\w\\s]`, a run of word
characters or one punctuation character; `é` is a word character, an emoji is punctuation) splits a text into
character spans; each token goes, through its offset mapping, to every word whose characters it overlaps;
a word's activation on one side is the mean over that side's tokens for it. A word is kept when both sides
cover it whole, so a word cut by truncation on either side is dropped on both.

Special tokens ([CLS], [SEP], BOS, padding) and tokens that cover no characters belong to no word; a token's
whitespace (GPT-2 style ` the`) is not part of its span.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import torch
from torch import Tensor

from sae_ception.errors import ConfigError

WORD_PATTERN: re.Pattern = re.compile(r"\w+|[^\w\s]")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character [start, end) of each word of `text` (matches of `WORD_PATTERN`), in order; [] for no words."""
    return [match.span() for match in WORD_PATTERN.finditer(text)]


def _trim(start: int, end: int, text: str) -> tuple[int, int]:
    """The span, clipped to the text, without its leading and trailing whitespace (empty when all whitespace)."""
    start, end = min(start, len(text)), min(end, len(text))
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def token_words(offsets: Sequence[tuple[int, int]], text: str, spans: list[tuple[int, int]]) -> list[list[int]]:
    """For each word of `spans` (from `word_spans(text)`), the sorted positions in `offsets` of the tokens
    assigned to it: those whose character span (whitespace trimmed) overlaps the word's.

    A token covering no characters (a special token's (0, 0)) goes to no word. A word whose tokens do not
    reach both its first and its last character (cut by truncation) gets [], as does a word with no token.
    Raises nothing: offsets past the end of the text are clipped to it.
    """
    groups: list[list[int]] = [[] for _ in spans]
    starts = [s for s, _ in spans]
    lo = [len(text) + 1] * len(spans)
    hi = [-1] * len(spans)
    for position, (start, end) in enumerate(offsets):
        start, end = _trim(int(start), int(end), text)
        if start >= end:
            continue
        w = max(bisect_right(starts, start) - 1, 0)  # the last word starting at or before the token
        while w < len(spans) and spans[w][0] < end:
            if spans[w][1] > start:
                groups[w].append(position)
                lo[w], hi[w] = min(lo[w], start), max(hi[w], end)
            w += 1
    return [group if lo[w] <= spans[w][0] and hi[w] >= spans[w][1] else [] for w, group in enumerate(groups)]


def tokenize_with_offsets(tokenizer, texts: list[str], max_length: int) -> tuple[dict[str, Tensor], list[list[tuple[int, int]]]]:
    """Tokenise `texts` with a fast tokenizer and keep each token's character span.

    Returns input_ids and attention_mask (N, L), padded on the right to the longest text (truncated at
    `max_length`), and for each text the (start, end) of its real tokens (length = its mask sum; special
    tokens get (0, 0)). With no texts: (0, 1) tensors and [].
    Raises ConfigError when the tokenizer is not a fast one (no offset mapping).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"token-level alignment needs a fast tokenizer (offset mapping), and {type(tokenizer).__name__} is not one; "
            "use align.level=example"
        )
    if not texts:
        empty = torch.zeros(0, 1, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}, []
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", padding_side="right",
                        return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets: list[list[tuple[int, int]]] = []
    for row, n in enumerate(encoded["attention_mask"].sum(1).tolist()):
        spans = encoded["offset_mapping"][row, :n].tolist()
        special = encoded["special_tokens_mask"][row, :n].tolist()
        offsets.append([(0, 0) if is_special else (s, e) for (s, e), is_special in zip(spans, special)])
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}, offsets


@dataclass
class WordPairing:
    """The words covered by both tokenizers, in text order then word order."""

    text_index: Tensor
    """(W,) long: the text each kept word comes from (its row in both sides' batches)."""
    groups_a: list[list[int]]
    """Per kept word, the positions of its tokens in side A's row of that text (sorted, never empty)."""
    groups_b: list[list[int]]
    """The same for side B."""
    spans: Tensor = None  # type: ignore[assignment]
    """(W, 2) long: each kept word's character [start, end) in its text (for reports)."""

    def __len__(self) -> int:
        return len(self.groups_a)


def pair_words(texts: list[str], offsets_a: list[list[tuple[int, int]]],
               offsets_b: list[list[tuple[int, int]]]) -> WordPairing:
    """The words of `texts` that both sides cover whole (see `token_words`), with each side's token positions.

    `offsets_a[i]` / `offsets_b[i]` are text i's token spans on each side (from `tokenize_with_offsets`).
    Raises ValueError when the three lists differ in length.
    """
    if not len(texts) == len(offsets_a) == len(offsets_b):
        raise ValueError(f"pair_words: {len(texts)} texts but {len(offsets_a)} and {len(offsets_b)} offset lists")
    index: list[int] = []
    groups_a: list[list[int]] = []
    groups_b: list[list[int]] = []
    kept: list[tuple[int, int]] = []
    for i, text in enumerate(texts):
        spans = word_spans(text)
        for span, group_a, group_b in zip(spans, token_words(offsets_a[i], text, spans),
                                          token_words(offsets_b[i], text, spans)):
            if group_a and group_b:
                index.append(i)
                groups_a.append(group_a)
                groups_b.append(group_b)
                kept.append(span)
    return WordPairing(torch.tensor(index, dtype=torch.long), groups_a, groups_b,
                       torch.tensor(kept, dtype=torch.long).reshape(-1, 2))


def word_means(hidden_BTD: Tensor, groups: list[list[int]], rows: list[int]) -> Tensor:
    """(W, D) float32: row w is the mean of hidden_BTD[rows[w], groups[w], :] over the word's tokens.

    One gather and one index_add_ over all tokens of the batch; any input dtype, summed in float32.
    Raises ValueError when `groups` and `rows` differ in length or a group is empty.
    """
    if len(groups) != len(rows):
        raise ValueError(f"word_means: {len(groups)} groups but {len(rows)} rows")
    lengths = torch.tensor([len(group) for group in groups], dtype=torch.long)
    if (lengths == 0).any():
        raise ValueError(f"word_means: word {int((lengths == 0).nonzero()[0])} has no tokens")
    device = hidden_BTD.device
    word_N = torch.repeat_interleave(torch.arange(len(groups)), lengths).to(device)
    row_N = torch.repeat_interleave(torch.tensor(rows, dtype=torch.long), lengths).to(device)
    position_N = torch.tensor(list(chain.from_iterable(groups)), dtype=torch.long, device=device)
    acts_ND = hidden_BTD[row_N, position_N].float()
    sums_WD = torch.zeros(len(groups), hidden_BTD.shape[-1], dtype=torch.float32, device=device)
    sums_WD.index_add_(0, word_N, acts_ND)
    return sums_WD / lengths.to(device=device, dtype=torch.float32).unsqueeze(1)
