"""Texts that give no token (empty or whitespace-only, with a tokenizer that adds no BOS/CLS): each is still an
example, read as one padding token, on every path (pooling, token rows, length-grouped batches, activations,
top tokens), for every family and pooling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sae_ception.data.base import DataSplits, Split
from sae_ception.models.pooling import POOLINGS, pooling_weights, with_a_token_per_row
from sae_ception.models.transformer import TransformerClassifier, TransformerConfig
from sae_ception.utils.batching import example_lengths, shuffled_batches, take
from tests.data.test_data_text import word_tokenizer_folder
from tests.models.tiny_transformers import FAMILIES, save_tiny

WORDS = ["good", "bad", "film", "plot"]
PAD_ID = 1  # the word tokenizer has no pad token: it pads with its EOS, id 1


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Tiny models of each family with a word-level tokenizer that adds no BOS/CLS token."""
    root = tmp_path_factory.mktemp("tiny_empty")
    return {family: word_tokenizer_folder(save_tiny(family, root / family), WORDS) for family in FAMILIES}


def classifier(folder, pooling) -> TransformerClassifier:
    torch.manual_seed(0)
    return TransformerClassifier(TransformerConfig(pretrained=str(folder), pooling=pooling, target_layer=1),
                                 num_classes=2).eval()


def batch(lengths, width=None, pad_id=PAD_ID):
    width = max(lengths) if width is None else width
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.where(mask.bool(), torch.arange(2, 2 + width).repeat(len(lengths), 1) % 6 + 2, pad_id)
    return {"input_ids": ids, "attention_mask": mask}


def test_pooling_weights_sit_on_real_tokens_only_and_never_index_an_empty_row():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    for pooling in POOLINGS:
        weights = pooling_weights(mask, pooling)
        assert (weights[1] == 0).all() and (weights * (1 - mask) == 0).all()
        assert torch.allclose(weights[[0, 2]].sum(1), torch.ones(2))
        assert pooling_weights(torch.zeros(3, 0, dtype=torch.long), pooling).shape == (3, 0)  # no column at all


def test_with_a_token_per_row_makes_position_0_real_and_keeps_other_rows():
    inputs = batch([2, 0, 0], width=3)
    ids, mask = with_a_token_per_row(inputs["input_ids"], inputs["attention_mask"], fill_id=7)
    assert mask.sum(1).tolist() == [2, 1, 1] and torch.equal(ids, inputs["input_ids"])  # ids: the padding id
    ids, mask = with_a_token_per_row(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long), 7)
    assert ids.tolist() == [[7], [7]] and mask.tolist() == [[1], [1]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_an_empty_row_is_read_as_one_padding_token_in_any_batch(tiny_folders, family, pooling):
    model = classifier(tiny_folders[family], pooling)
    # mixed, all empty, and no column at all (then the model's own pad/EOS/BOS id, here 0, fills one)
    cases = ((batch([4, 0, 2]), PAD_ID), (batch([0, 0], width=3), PAD_ID), (batch([0, 0], width=0), model.fill_token_id()))
    with torch.no_grad(), model.capture_target() as captured:
        for inputs, read_as in cases:
            reference_logits = model({"input_ids": torch.tensor([[read_as]]), "attention_mask": torch.tensor([[1]])})
            reference_acts, reference_tokens = captured.acts, captured.tokens
            logits = model(inputs)
            empty = inputs["attention_mask"].sum(1) == 0
            assert torch.isfinite(logits).all() and torch.isfinite(captured.acts).all()
            torch.testing.assert_close(logits[empty], reference_logits.expand(int(empty.sum()), -1), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(captured.acts[empty], reference_acts.expand(int(empty.sum()), -1), atol=1e-5, rtol=1e-4)
            real_tokens = int(inputs["attention_mask"].sum()) + int(empty.sum())  # one token per empty row
            assert captured.tokens.shape == (real_tokens, reference_tokens.shape[1])


@pytest.mark.parametrize("token_level", [False, True])
def test_splicing_reaches_an_empty_row(tiny_folders, token_level):
    model = classifier(tiny_folders["gpt2"], "last")
    inputs = batch([3, 0])
    with torch.no_grad(), model.splice_target(lambda acts: torch.full_like(acts, 0.5), token_level), \
            model.capture_target() as seen:
        model(inputs)
        assert torch.allclose(seen.acts[1], torch.full_like(seen.acts[1], 0.5))


def text_splits(train, val, test) -> DataSplits:
    def split(texts):
        return Split(x=list(texts), y=torch.arange(len(texts)) % 2)

    return DataSplits(train=split(train), val=split(val), test=split(test), num_classes=2, input_shape=(), source="test")


@pytest.fixture
def prepared(tiny_folders, caplog):
    """Tokenised splits with empty and whitespace-only texts; the test split holds nothing else (no column)."""
    folder = tiny_folders["gpt2"]
    splits = text_splits(["good film", "", "bad", "   ", "good bad plot", ""] * 4, ["", "plot"], ["", " ", "\t"])
    with caplog.at_level(logging.WARNING):
        tokens = TransformerClassifier.prepare_splits(TransformerConfig(pretrained=str(folder)),
                                                      type("D", (), {"name": "sst2", "max_length": 8})(), splits)
    return folder, tokens


def test_prepared_splits_give_every_text_a_token_and_say_so(prepared, caplog):
    _, tokens = prepared
    for name in ("train", "val", "test"):
        x = getattr(tokens, name).x
        assert (x["attention_mask"].sum(1) >= 1).all() and x["input_ids"].shape[1] >= 1
    test_ids = tokens.test.x["input_ids"]
    assert test_ids.shape == (3, 1) and (test_ids == PAD_ID).all()  # padded with EOS: read as one EOS token
    messages = " | ".join(r.getMessage() for r in caplog.get_records("setup"))
    assert "12 train texts give no token" in messages and "3 test texts give no token" in messages


def test_a_length_grouped_batch_of_only_empty_texts_trains(prepared):
    folder, tokens = prepared
    model = classifier(folder, "last").train()
    lengths = example_lengths(tokens.train.x)
    batches = list(shuffled_batches(len(lengths), 4, torch.Generator().manual_seed(0), lengths=lengths))
    only_empty = [rows for rows in batches if (lengths[rows] == 1).all() and len(rows) > 1]
    assert only_empty, "the grouping should put the empty texts together"
    for rows in batches:
        loss = torch.nn.functional.cross_entropy(model(take(tokens.train.x, rows)), tokens.train.y[rows])
        loss.backward()
        assert torch.isfinite(loss)


def test_activations_and_top_tokens_count_one_token_per_empty_text(prepared, tmp_path):
    from accelerate import Accelerator

    from sae_ception.activations import collect_activations, load_activations
    from sae_ception.evaluation.top_tokens import top_activating_tokens

    folder, tokens = prepared
    model = classifier(folder, "mean")
    collect_activations(model, tokens, Accelerator(cpu=True), batch_size=4, path=tmp_path / "acts", tokens=True)
    loaded = load_activations(tmp_path / "acts")
    for name in ("train", "val", "test"):
        mask = getattr(tokens, name).x["attention_mask"]
        assert loaded[name].tokens_TD.shape[0] == int(mask.sum()) and np.isfinite(loaded[name].acts_ND.numpy()).all()
    # the test split holds only empty texts: each has one token row, and mean pooling gives exactly that row
    torch.testing.assert_close(loaded["test"].tokens_TD, loaded["test"].acts_ND)

    class IdentitySAE(torch.nn.Module):
        def encode(self, x):
            return torch.relu(x)

    hits = top_activating_tokens(model, IdentitySAE(), tokens.test.x, torch.arange(4), k=2, window=1, batch_size=2)
    assert (hits.positions_KS == 0).all() and hits.values_KS.shape == (2, 4)
