"""Splice-in accuracy: the model's accuracy when the SAE reconstruction replaces the target activation."""

import torch
from accelerate import Accelerator

from sae_ception.evaluation.performance import performance_metrics, spliced_logits
from sae_ception.models import build_model, capture_output
from sae_ception.models.mlp import MLPConfig


class StubSAE(torch.nn.Module):
    """encode/decode with a fixed map, to hand-compute what the spliced model sees."""

    def __init__(self, decode_fn):
        super().__init__()
        self.decode_fn = decode_fn

    def encode(self, x):
        return x

    def decode(self, codes):
        return self.decode_fn(codes)


def make_model(target_layer=-1):
    torch.manual_seed(0)
    return build_model(MLPConfig(hidden_sizes=[8, 6], target_layer=target_layer), input_dim=5, num_classes=3).eval()


def test_identity_reconstruction_changes_nothing():
    model, x = make_model(), torch.randn(40, 5)
    got = spliced_logits(model, StubSAE(lambda c: c), x, Accelerator(cpu=True), batch_size=16)
    assert torch.allclose(got, model(x))


def test_zero_reconstruction_leaves_only_the_head_bias():
    model, x = make_model(), torch.randn(40, 5)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    logits = spliced_logits(model, StubSAE(torch.zeros_like), x, Accelerator(cpu=True), batch_size=16)
    assert torch.allclose(logits, model.head.bias.expand(40, 3))
    labels = torch.tensor([1] * 10 + [0] * 30)  # every example is predicted as class 1 -> 25% accuracy
    metrics = performance_metrics(model(x).detach(), logits, labels)
    assert metrics["spliced_accuracy"] == 0.25
    assert abs(metrics["spliced_accuracy_drop"] - (metrics["accuracy"] - 0.25)) < 1e-12


def test_splice_hits_the_configured_layer():
    model, x = make_model(target_layer=0), torch.randn(10, 5)
    with capture_output(model.blocks[0]) as box:
        model(x)
    doubled = spliced_logits(model, StubSAE(lambda c: 2 * c), x, Accelerator(cpu=True), batch_size=4)
    expected = model.head(model.blocks[1](2 * box["acts"]))
    assert torch.allclose(doubled, expected)
