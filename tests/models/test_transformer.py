"""The transformer classifier on tiny random GPT-2, GPT-NeoX, LLaMA and BERT models built locally:
hooks read the right block, pooling and splicing behave, and freezing stops below the target layer."""

from __future__ import annotations

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.models.blocks import find_blocks
from sae_ception.models.transformer import TransformerClassifier, TransformerConfig, resolve_pooling
from sae_ception.training.classifier import trainable_names
from tests.models.tiny_transformers import FAMILIES, NUM_BLOCKS, save_tiny, token_batch


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


def classifier(folder, **overrides) -> TransformerClassifier:
    torch.manual_seed(0)
    model = TransformerClassifier(TransformerConfig(pretrained=str(folder), **overrides), num_classes=3)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 1, -2])
def test_hook_reads_the_residual_output_of_the_chosen_block(tiny_folders, family, layer):
    model = classifier(tiny_folders[family], target_layer=layer, pooling="mean")
    batch = token_batch()
    with torch.no_grad(), model.capture_target() as captured:
        model(batch)
        tokens = captured.tokens
        acts = captured.acts
        reference = model.backbone(**batch, output_hidden_states=True).hidden_states[layer % NUM_BLOCKS + 1]
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(tokens, reference[mask])  # hidden_states[i + 1] is block i's output
    expected = torch.stack([reference[b][mask[b]].mean(0) for b in range(len(mask))])
    torch.testing.assert_close(acts, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_block_list_is_found_for_every_family(tiny_folders, family):
    model = classifier(tiny_folders[family])
    assert len(find_blocks(model.backbone)) == NUM_BLOCKS


def test_auto_pooling_is_cls_for_encoders_and_last_for_decoders(tiny_folders):
    assert classifier(tiny_folders["bert"]).pooling == "cls"
    for family in ("gpt2", "gpt_neox", "llama"):
        assert classifier(tiny_folders[family]).pooling == "last"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_last_token_pooling_ignores_right_padding(tiny_folders, family):
    """A sentence alone and the same sentence padded in a batch give the same pooled activation and logits."""
    model = classifier(tiny_folders[family], pooling="last", target_layer=1)
    batch = token_batch((6, 2))
    alone = {k: v[1:, :2] for k, v in batch.items()}
    with torch.no_grad(), model.capture_target() as captured:
        logits_batch, acts_batch = model(batch), captured.acts
        logits_alone, acts_alone = model(alone), captured.acts
    torch.testing.assert_close(acts_batch[1:], acts_alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_batch[1:], logits_alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["last", "cls", "mean"])
@pytest.mark.parametrize("token_level", [False, True])
def test_splice_writes_the_given_activation(tiny_folders, pooling, token_level):
    model = classifier(tiny_folders["gpt2"], pooling=pooling, target_layer=1)
    batch = token_batch()
    with torch.no_grad():
        plain = model(batch)
        with model.splice_target(lambda acts: acts, token_level):
            identical = model(batch)
        with model.splice_target(lambda acts: torch.full_like(acts, 0.5), token_level), model.capture_target() as seen:
            changed = model(batch)
            pooled, tokens = seen.acts, seen.tokens
    torch.testing.assert_close(identical, plain)
    assert not torch.allclose(changed, plain)
    if token_level:
        torch.testing.assert_close(tokens, torch.full_like(tokens, 0.5))
    torch.testing.assert_close(pooled, torch.full_like(pooled, 0.5))  # the pooled view is exactly the replacement


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "bert"])
def test_from_target_freezes_embeddings_and_lower_blocks_only(tiny_folders, family):
    model = classifier(tiny_folders[family], target_layer=1)
    blocks = find_blocks(model.backbone)
    trainable = trainable_names(model, ["from_target"])
    block_of = {id(p): i for i, b in enumerate(blocks) for p in b.parameters()}
    for name, param in model.named_parameters():
        if id(param) in block_of:
            assert (name in trainable) == (block_of[id(param)] >= 1), name
    assert {"head.weight", "head.bias"} <= trainable
    embeddings = [n for n, _ in model.named_parameters() if "emb" in n or ".wte." in n or ".wpe." in n]
    assert embeddings and not any(n in trainable for n in embeddings)


def test_target_layer_outside_the_model_is_one_clear_line(tiny_folders):
    with pytest.raises(ConfigError, match=r"model.target_layer=3 is outside .* 3 blocks; use -3..2"):
        TransformerConfig(pretrained=str(tiny_folders["gpt2"]), target_layer=3).target_width()
    assert TransformerConfig(pretrained=str(tiny_folders["gpt2"]), target_layer=-3).target_width() == 16


def test_resolve_pooling_keeps_an_explicit_choice(tiny_folders):
    from transformers import AutoConfig

    assert resolve_pooling("mean", AutoConfig.from_pretrained(tiny_folders["gpt2"])) == "mean"
