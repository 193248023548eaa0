"""Text datasets from local TSV/CSV folders (and the hub's failure message), tokenisation and its cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sae_ception.data import load_splits
from sae_ception.data.text import TextDatasetConfig
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.models.tokenize import tokenize_splits


def write_tsv(path, rows, header=("sentence", "label")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture
def sst2_like(tmp_path):
    """train.tsv (40 rows), dev.tsv (10 labelled), test.tsv (GLUE style: no label column)."""
    write_tsv(tmp_path / "train.tsv", [(f'a "quoted" sentence number {i}', i % 2) for i in range(40)])
    write_tsv(tmp_path / "dev.tsv", [(f"dev sentence {i}" + " more" * (i % 3), i % 2) for i in range(10)])
    write_tsv(tmp_path / "test.tsv", [(i, f"unlabelled {i}") for i in range(5)], header=("index", "sentence"))
    return tmp_path


def config(path, **overrides) -> TextDatasetConfig:
    return TextDatasetConfig(**{"name": "sst2", "path": None if path is None else str(path), "num_classes": 2, "val_fraction": 0.25, **overrides})


def test_labelled_dev_file_is_the_test_split_and_val_is_carved_from_train(sst2_like):
    splits = load_splits(config(sst2_like), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert splits.test.x[0] == "dev sentence 0" and splits.is_text
    assert 'a "quoted" sentence number' in splits.train.x[0]  # TSV quotes are plain characters
    assert set(splits.train.x).isdisjoint(splits.val.x)
    assert splits.val.y.sum() == 5  # stratified


def test_same_seed_same_splits_other_seed_other_splits(sst2_like):
    a, b, c = (load_splits(config(sst2_like), seed=s) for s in (0, 0, 1))
    assert a.train.x == b.train.x and a.train.x != c.train.x


def test_caps_on_train_val_and_test(sst2_like):
    splits = load_splits(config(sst2_like, max_train_examples=8, max_val_examples=4, max_test_examples=6), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 6)


def test_without_a_labelled_test_file_test_is_carved_from_train(tmp_path):
    write_tsv(tmp_path / "train.tsv", [(f"s {i}", i % 2) for i in range(40)])
    splits = load_splits(config(tmp_path, test_fraction=0.25), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)


def test_csv_files_with_other_column_names(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + '"one, with a comma",0\ntwo,1\nthree,2\nfour,3\n' * 5)
    (tmp_path / "test.csv").write_text("text,label\nfive,0\nsix,3\n")
    splits = load_splits(config(tmp_path, name="ag_news", text_column="text", num_classes=4, val_fraction=0.2), seed=0)
    assert "one, with a comma" in splits.train.x + splits.val.x and len(splits.test) == 2


@pytest.mark.parametrize("setting,value", [("text_column", "review"), ("label_column", "sentiment")])
def test_a_missing_column_is_one_line_naming_the_setting(sst2_like, setting, value):
    with pytest.raises(ConfigError, match=rf"dataset.{setting}='{value}' is not a column of .*train.tsv \(columns: sentence, label\)"):
        load_splits(config(sst2_like, **{setting: value}), seed=0)


def test_labels_beyond_num_classes_are_rejected(tmp_path):
    write_tsv(tmp_path / "train.tsv", [(f"s {i}", i % 3) for i in range(30)])
    with pytest.raises(ConfigError, match=r"dataset.num_classes=2 but sst2's labels go up to 2 \(.*train.tsv line 4 has label 2\); set it to >= 3"):
        load_splits(config(tmp_path, test_fraction=0.2), seed=0)


def test_missing_folder_and_missing_train_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_splits(config(tmp_path / "nope"), seed=0)
    with pytest.raises(ArtifactError, match="has no train.tsv or train.csv"):
        load_splits(config(tmp_path), seed=0)


def test_hub_failure_says_how_to_use_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ArtifactError, match=r"could not load nyu-mll/glue/sst2 .* set dataset.path=/folder/with/train.tsv"):
        load_splits(config(None, hub_id="nyu-mll/glue", hub_config="sst2"), seed=0)


def test_shared_sst2_has_the_glue_sizes(shared_sst2):
    splits = load_splits(config(shared_sst2, val_fraction=0.05), seed=0)
    assert len(splits.test) == 872 and len(splits.train) + len(splits.val) == 67349
    assert set(np.unique(splits.train.y.numpy())) == {0, 1}


# --- tokenisation -------------------------------------------------------------------------------------------
def word_tokenizer_folder(folder, words):
    """A word-level tokenizer with an EOS token but no pad token, saved like a hub tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(sorted(set(words)))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(folder)
    return folder


def test_tokenizer_without_pad_token_pads_with_eos_and_says_so(sst2_like, tmp_path, caplog):
    splits = load_splits(config(sst2_like), seed=0)
    words = " ".join(splits.train.x + splits.val.x + splits.test.x).split()
    folder = word_tokenizer_folder(tmp_path / "tok", words)
    with caplog.at_level(logging.WARNING):
        tokens = tokenize_splits(splits, str(folder), max_length=4, cache_dir=None)
    assert any("has no pad token; padding with '[EOS]'" in r.getMessage() for r in caplog.records)
    ids, mask = tokens.train.x["input_ids"], tokens.train.x["attention_mask"]
    assert ids.shape[1] == 4 and mask.sum(1).max() == 4  # truncated at max_length
    three_words = [i for i, text in enumerate(splits.test.x) if len(text.split()) == 3]
    short = {k: v[three_words] for k, v in tokens.test.x.items()}  # padded to 4 with EOS (id 1), masked out
    assert three_words and (short["attention_mask"][:, 3] == 0).all() and (short["input_ids"][:, 3] == 1).all()


def test_tokens_are_cached_and_reused(sst2_like, tmp_path, monkeypatch):
    splits = load_splits(config(sst2_like), seed=0)
    folder = word_tokenizer_folder(tmp_path / "tok", " ".join(splits.train.x + splits.val.x + splits.test.x).split())
    first = tokenize_splits(splits, str(folder), max_length=8, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tokens_*.safetensors"))) == 1

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("sae_ception.models.tokenize.load_tokenizer", no_tokenizer)
    again = tokenize_splits(splits, str(folder), max_length=8, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train.x["input_ids"], again.train.x["input_ids"])
    with pytest.raises(AssertionError, match="cache should have been used"):  # another max_length: a new cache
        tokenize_splits(splits, str(folder), max_length=6, cache_dir=tmp_path / "cache")
