"""scripts/align_features.py at align.level=word between two transformers whose tokenizers really differ, offline.

Side A is a tiny random GPT-2 with a byte-level BPE trained here on SST-2 sentences (GPT-2 style: ` the` is one
token, offsets include the space); side B is a tiny random BERT with an in-memory WordPiece (lower-casing BERT
normaliser and pre-tokenizer, [CLS]/[SEP] added, most words spelled out letter by letter). Both are saved to local
folders with their tokenizers and given as `model.pretrained`. The run pairs the two sides' tokens through the
characters they cover (alignment/words.py); here every kept word is checked against each saved tokenizer's own
offsets, and a few word rows against the models' block outputs recomputed by hand with transformers.

Side A reads block 1 (align.layer_a=1), not the last block: GPT-2's last `hidden_states` entry is after its final
layer norm, so `hidden_states[layer + 1]` is block `layer`'s output for every block but the last one.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_ception.alignment.words import word_spans
from tests.conftest import SHARED_DATA
from tests.models.tiny_transformers import tiny_config
from tests.pipeline.test_align_features import COMMON, DIRECTIONS, SPACES, alignment, compose_align, run_align, table

SST2 = SHARED_DATA / "sst2"
LAYER_A, LAYER_B = 1, 2  # GPT-2: align.layer_a=1; BERT: its target_layer -1 of 3 blocks
TEXTS = {"train": 200, "val": 50, "test": 50}
OVERRIDES = [
    "model@model_a=gpt2_small", "model@model_b=minilm", "model_b.pooling=mean", f"align.layer_a={LAYER_A}",
    "dataset=sst2", f"dataset.path={SST2}", "dataset.max_train_examples=200", "dataset.max_val_examples=50",
    "dataset.max_test_examples=50", "dataset.max_length=32", "align.level=word", "align.mappings=[procrustes,affine]",
    "align.ceiling=false", "sae.d_sae=32", "sae.epochs=3", "eval_batch_size=64",
]
MAPPED = ("procrustes", "affine")


def _sst2_sentences(n: int) -> list[str]:
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1:n + 1]
    return [line.split("\t")[0] for line in lines]


def _wordpiece(sentences: list[str]):
    """A BERT-style WordPiece of exactly 100 entries: specials, letters, ##letters, punctuation and the commonest
    SST-2 words; any other word is spelled out letter by letter (or is one [UNK] covering it whole)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *string.ascii_lowercase, *("##" + c for c in string.ascii_lowercase),
             *".,'-!?;:()`"]
    counts = Counter(w for s in sentences for w in s.lower().split() if w.isalpha() and len(w) > 1)
    vocab += [w for w, _ in counts.most_common()][:100 - len(vocab)]
    assert len(vocab) == len(set(vocab)) == 100
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def _byte_bpe(sentences: list[str]):
    """A GPT-2 style byte-level BPE (no special tokens added to a text; padding with its end-of-text token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _save_model(family: str, tokenizer, folder: Path) -> Path:
    """tiny_config(family) (3 blocks, width 16) with the tokenizer's vocabulary size, random weights, and the
    tokenizer saved beside them."""
    from transformers import AutoModel

    config = tiny_config(family)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    if family == "gpt2":
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory) -> dict:
    if not (SST2 / "train.tsv").is_file() or not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"needs {SST2} (GLUE SST-2 train.tsv + dev.tsv) beside the project")
    root = tmp_path_factory.mktemp("cross_tokenizer")
    sentences = _sst2_sentences(2000)
    gpt2 = _save_model("gpt2", _byte_bpe(sentences), root / "tiny_gpt2")
    bert = _save_model("bert", _wordpiece(sentences), root / "tiny_bert")
    overrides = [*OVERRIDES, f"model_a.pretrained={gpt2}", f"model_b.pretrained={bert}"]
    run_dir = root / "run"
    run_align(run_dir, overrides, base=COMMON)
    return {"run_dir": run_dir, "folders": {"a": gpt2, "b": bert}, "overrides": overrides}


def _test_texts(cross_run) -> list[str]:
    """The test split's texts exactly as the stage reads them (its config, its data seed)."""
    from sae_ception.alignment.config import parse_align_config
    from sae_ception.data import load_splits
    from sae_ception.utils.seeding import stage_seed

    cfg = parse_align_config(compose_align(cross_run["run_dir"], cross_run["overrides"], base=COMMON))
    texts = list(load_splits(cfg.dataset, seed=stage_seed(cfg.seed, 0, "data")).test.x)
    assert len(texts) == TEXTS["test"]
    return texts


def _saved_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.is_fast
    return tokenizer


def _covering(tokenizer, text: str, span) -> tuple[list[int], list[str], bool]:
    """Positions and strings of the real tokens whose characters, whitespace aside, overlap the word's span,
    from the tokenizer's own offsets (truncated at 32 tokens, like the run), and whether they reach both ends of
    the word (False for a word cut by truncation)."""
    encoded = tokenizer(text, truncation=True, max_length=32, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    start, end = span
    positions, lo, hi = [], len(text), 0
    for position, ((s, e), special) in enumerate(zip(encoded["offset_mapping"], encoded["special_tokens_mask"])):
        piece = text[s:e]
        s, e = s + (len(piece) - len(piece.lstrip())), e - (len(piece) - len(piece.rstrip()))
        if not special and s < e and s < end and e > start:
            positions.append(position)
            lo, hi = min(lo, s), max(hi, e)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    return positions, [tokens[p] for p in positions], bool(positions) and lo <= start and hi >= end


def test_run_finishes_with_word_rows_on_both_sides(cross_run):
    run_dir = cross_run["run_dir"]
    document = alignment(run_dir)
    assert document["level"] == "word"
    assert document["own_accuracy"] == {"a": None, "b": None}  # pretrained heads were never trained
    for side, layer in (("a", LAYER_A), ("b", LAYER_B)):
        source = document["sources"][side]
        assert source["kind"] == "preset" and source["model"] == "transformer" and source["layer"] == layer
    rows = document["rows_per_split"]
    assert set(rows) == set(TEXTS)
    for split, count in rows.items():
        assert count > TEXTS[split], (split, count)  # one row per kept word, several words per text
        for side in ("a", "b"):
            folder = run_dir / "activations" / side
            assert np.load(folder / f"{split}.acts.npy", mmap_mode="r").shape == (count, 16)
            assert np.load(folder / f"{split}.text_index.npy").shape == (count,)
            assert np.load(folder / f"{split}.word_spans.npy").shape == (count, 2)
    for name in ("text_index", "word_spans", "labels"):
        assert np.array_equal(np.load(run_dir / "activations" / "a" / f"test.{name}.npy"),
                              np.load(run_dir / "activations" / "b" / f"test.{name}.npy")), name
    text_index = np.load(run_dir / "activations" / "a" / "test.text_index.npy")
    assert text_index.min() >= 0 and text_index.max() < TEXTS["test"] and (np.diff(text_index) >= 0).all()


def test_the_table_has_every_mapping_in_both_spaces_and_directions(cross_run):
    rows = table(alignment(cross_run["run_dir"]))
    for space in SPACES:
        for direction in DIRECTIONS:
            for predictor in MAPPED:
                row = rows[space, direction, predictor]
                assert row["kind"] == "mapping", (space, direction, predictor)
                assert -1.0 <= row["cosine"] <= 1.0 and row["r2"] <= 1.0
                assert "accuracy_change" not in row  # word rows: nothing spliced downstream
    assert not [key for key in rows if key[2].endswith("(same model)")]  # align.ceiling=false


def test_word_spans_are_words_both_saved_tokenizers_cover_and_split_differently(cross_run):
    run_dir, folders = cross_run["run_dir"], cross_run["folders"]
    texts = _test_texts(cross_run)
    tokenizers = {side: _saved_tokenizer(folder) for side, folder in folders.items()}
    assert tokenizers["b"]("the")["input_ids"][0] == tokenizers["b"].cls_token_id  # WordPiece adds [CLS]...
    assert not any(tokenizers["a"]("the", return_special_tokens_mask=True)["special_tokens_mask"])  # BPE: none
    spans = np.load(run_dir / "activations" / "a" / "test.word_spans.npy")
    text_index = np.load(run_dir / "activations" / "a" / "test.text_index.npy")
    differently, truncated = [], 0
    for t in sorted(set(text_index.tolist()))[:8]:
        text = texts[t]
        kept = [tuple(int(v) for v in span) for span in spans[text_index == t]]
        words = [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]
        assert word_spans(text) == words
        # exactly the words both saved tokenizers cover whole, in order (words cut by truncation are dropped)
        whole = [w for w in words if all(_covering(tok, text, w)[2] for tok in tokenizers.values())]
        assert kept == whole, (text, kept, whole)
        truncated += len(kept) < len(words)
        for start, end in kept:
            word = text[start:end]
            assert word and not word.isspace() and word == word.strip(), (text, start, end)
            covered = {side: _covering(tokenizer, text, (start, end)) for side, tokenizer in tokenizers.items()}
            for side, (positions, _, _) in covered.items():
                assert positions, (side, text, word)  # each side has at least one token inside the word
            tokens_a, tokens_b = covered["a"][1], covered["b"][1]
            if [s.lstrip("Ġ") for s in tokens_a] != [s.removeprefix("##") for s in tokens_b]:
                differently.append((word, tokens_a, tokens_b))
    assert truncated, "no checked text was cut at 32 tokens: the truncation rule went untested"
    assert differently, "the two tokenizers split every checked word the same way: nothing cross-tokenizer tested"
    assert any(len(a) != len(b) for _, a, b in differently), differently


@pytest.mark.parametrize("side", ["a", "b"])
def test_word_rows_are_the_mean_block_output_over_the_words_tokens(cross_run, side):
    """Recomputed by hand: the saved tokenizer's tokens for one text, the saved model's hidden_states[layer + 1],
    the mean over the tokens covering the word, against that word's row of activations/<side>/test.acts.npy."""
    from transformers import AutoModel

    run_dir, folder = cross_run["run_dir"], cross_run["folders"][side]
    layer = LAYER_A if side == "a" else LAYER_B
    texts = _test_texts(cross_run)
    tokenizer = _saved_tokenizer(folder)
    model = AutoModel.from_pretrained(folder).eval()
    acts = np.load(run_dir / "activations" / side / "test.acts.npy")
    spans = np.load(run_dir / "activations" / side / "test.word_spans.npy")
    text_index = np.load(run_dir / "activations" / side / "test.text_index.npy")
    checked = 0
    for t in sorted(set(text_index.tolist()))[:2]:
        text = texts[t]
        encoded = tokenizer(text, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            hidden_TD = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                              output_hidden_states=True).hidden_states[layer + 1][0]
        words = np.flatnonzero(text_index == t)
        for w in (words[0], words[len(words) // 2], words[-1]):
            positions, _, _ = _covering(tokenizer, text, tuple(spans[w]))
            expected = hidden_TD[positions].mean(0).numpy()
            assert np.allclose(acts[w], expected, atol=1e-4), (side, text, text[spans[w][0]:spans[w][1]],
                                                               np.abs(acts[w] - expected).max())
            checked += 1
    assert checked == 6
