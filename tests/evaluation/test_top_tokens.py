"""Top activating tokens: the running top-k on hand-made token codes, and the one-pass extraction through a tiny
transformer against a token-by-token brute force."""

from __future__ import annotations

import pytest
import torch

from sae_ception.evaluation.top_tokens import RunningTopTokens, describe_top_tokens, top_activating_tokens
from sae_ception.models.transformer import TransformerClassifier, TransformerConfig
from sae_ception.sae import build_sae
from sae_ception.sae.relu import ReluSAEConfig
from tests.models.tiny_transformers import save_tiny, token_batch

PAD = 9.0  # a large code on padding positions: must never be ranked nor shown


def hand_made_hits():
    """3 examples of 4, 2 and 3 real tokens; per (position, feature) codes of 3 features, the last never firing.
    Feature 0 peaks at example 0 position 1 (3.0) and at example 2's last token (2.0); feature 1 fires once,
    on example 1's first token."""
    codes_NLS = torch.zeros(3, 4, 3)
    codes_NLS[0, :, 0] = torch.tensor([0.0, 3.0, 0.0, 1.0])
    codes_NLS[1, :, 0] = torch.tensor([0.5, 0.0, PAD, PAD])
    codes_NLS[1, :, 1] = torch.tensor([0.5, 0.0, PAD, PAD])
    codes_NLS[2, :, 0] = torch.tensor([1.0, 0.0, 2.0, PAD])
    mask_NL = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    running = RunningTopTokens(num_features=3, k=2, window=1)
    for rows in (torch.tensor([2, 0]), torch.tensor([1])):  # two batches, each cut to its longest row
        length = int(mask_NL[rows].sum(1).max())
        running.update(codes_NLS[rows, :length], mask_NL[rows, :length], rows)
    inputs = {"input_ids": torch.tensor([[10, 11, 12, 13], [20, 21, 0, 0], [30, 31, 32, 0]]),
              "attention_mask": mask_NL.long()}
    return running.hits, inputs


def test_running_top_k_keeps_the_strongest_real_tokens_across_batches():
    hits, _ = hand_made_hits()
    assert hits.values_KS[:, :2].tolist() == [[3.0, 0.5], [2.0, 0.0]]
    assert hits.examples_KS[:, 0].tolist() == [0, 2] and hits.positions_KS[:, 0].tolist() == [1, 2]
    assert (hits.examples_KS[0, 1], hits.positions_KS[0, 1]) == (1, 0)
    assert hits.windows_KSW[0, 0].tolist() == [0.0, 3.0, 0.0]
    assert hits.windows_KSW[0, 1].tolist() == [0.0, 0.5, 0.0]  # position -1 lies outside the text


def test_described_hits_give_tokens_labels_and_context_windows():
    hits, inputs = hand_made_hits()
    decoded = []

    def decode(ids):
        decoded.append(list(ids))
        return [f"t{i}" for i in ids]

    feature_0, feature_1, feature_2 = describe_top_tokens(hits, inputs, torch.tensor([1, 0, 1]), decode)
    assert feature_0 == [
        {"token": "t11", "activation": 3.0, "index": 0, "position": 1, "label": 1,
         "context_tokens": ["t10", "t11", "t12"], "context_activations": [0.0, 3.0, 0.0], "token_in_context": 1},
        {"token": "t32", "activation": 2.0, "index": 2, "position": 2, "label": 1,  # the padding after it is left out
         "context_tokens": ["t31", "t32"], "context_activations": [0.0, 2.0], "token_in_context": 1},
    ]
    assert feature_1 == [{"token": "t20", "activation": 0.5, "index": 1, "position": 0, "label": 0,
                          "context_tokens": ["t20", "t21"], "context_activations": [0.5, 0.0], "token_in_context": 0}]
    assert feature_2 == []  # never fires: no hit, although top-k keeps zeros
    assert len(decoded) == 1 and sorted(decoded[0]) == [10, 11, 12, 20, 21, 31, 32]  # each token decoded once


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    torch.manual_seed(0)
    model = TransformerClassifier(TransformerConfig(pretrained=str(save_tiny("bert", tmp_path_factory.mktemp("bert"))),
                                                    target_layer=1), num_classes=2)
    sae = build_sae(ReluSAEConfig(d_sae=12, normalize="none"), d_in=16)
    return model.eval(), sae.eval()


def test_one_pass_matches_a_token_by_token_brute_force(tiny_bert):
    """Batches visited longest first, split encodings and right padding give the same hits and windows as
    encoding every example's tokens alone."""
    model, sae = tiny_bert
    inputs = token_batch(lengths=(5, 3, 7, 2, 6, 4), seed=1)
    features = torch.tensor([7, 2, 10, 0])
    k, window = 4, 2
    hits = top_activating_tokens(model, sae, inputs, features, k, window, batch_size=2, encode_rows=5)
    per_example = []
    with torch.no_grad(), model.capture_target() as captured:
        for row, length in enumerate(inputs["attention_mask"].sum(1).tolist()):
            model({name: tensor[row:row + 1, :length] for name, tensor in inputs.items()})
            per_example.append(sae.encode(captured.tokens)[:, features])  # (length, S)
    for column in range(len(features)):
        cells = sorted(((float(codes[t, column]), row, t) for row, codes in enumerate(per_example)
                        for t in range(len(codes))), reverse=True)[:k]
        expected_K = torch.tensor([value for value, _, _ in cells])
        torch.testing.assert_close(hits.values_KS[:, column], expected_K, atol=1e-5, rtol=1e-4)
        assert list(zip(hits.examples_KS[:, column].tolist(), hits.positions_KS[:, column].tolist())) == \
            [(row, t) for _, row, t in cells]
        for (_, row, t), window_W in zip(cells, hits.windows_KSW[:, column]):
            codes = per_example[row][:, column]
            expected = [float(codes[p]) if 0 <= p < len(codes) else 0.0 for p in range(t - window, t + window + 1)]
            torch.testing.assert_close(window_W, torch.tensor(expected), atol=1e-5, rtol=1e-4)
    assert (hits.values_KS > 0).sum() >= 8, "the random SAE must fire on enough tokens for the check to mean something"
