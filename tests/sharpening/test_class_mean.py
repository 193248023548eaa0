"""class_mean: each example's target is its class's mean activation; no SAE is used."""

import pytest
import torch

from tests.sharpening.helpers import ACTS, LABELS, make_targets


class NoSAE:
    def __getattr__(self, name):
        raise AssertionError(f"class_mean must not use the SAE (it called {name})")


CLASS_MEANS = torch.tensor([[2.5, 0.5, 1.35], [0.5, 3.5, 1.0]])  # (x0 + x1) / 2 and (x2 + x3) / 2, by hand


@pytest.mark.parametrize("batch_size", [4096, 1, 3])
def test_targets_are_the_class_means(batch_size):
    got = make_targets("class_mean", NoSAE(), batch_size=batch_size)
    assert torch.allclose(got, CLASS_MEANS[LABELS])


def test_interleaved_and_missing_labels():
    labels = torch.tensor([2, 0, 2, 0])  # class 1 absent
    expected = torch.tensor([[2.0, 2.5, 0.6], [1.0, 1.5, 1.75], [2.0, 2.5, 0.6], [1.0, 1.5, 1.75]])
    assert torch.allclose(make_targets("class_mean", NoSAE(), labels=labels), expected)


def test_float16_activations_give_float32_targets():
    got = make_targets("class_mean", NoSAE(), acts=ACTS.half())
    assert got.dtype == torch.float32
    assert torch.allclose(got, CLASS_MEANS[LABELS], atol=1e-3)
