"""shuffled: every example takes another example's reference target (a seeded derangement)."""

import pytest
import torch

from sae_ception.errors import ArtifactError
from sae_ception.sharpening.shuffled import random_derangement
from tests.sharpening.helpers import (ACTS, HAND_SAE_TYPES, LABELS, PER_CLASS_TOP1, PER_EXAMPLE_TOP2, hand_sae,
                                      make_targets)


def sources(targets, reference):
    """For each target row, the index of the one reference row it equals (reference rows are distinct)."""
    matches = torch.isclose(targets[:, None, :], reference[None, :, :]).all(-1)
    assert (matches.sum(1) == 1).all(), "every target must be exactly one reference row"
    return matches.float().argmax(1)


@pytest.mark.parametrize("sae_type", HAND_SAE_TYPES)
def test_each_example_gets_another_examples_reference_target(sae_type):
    got = make_targets("shuffled", hand_sae(sae_type), top_k=1)
    source = sources(got, PER_CLASS_TOP1)
    assert sorted(source.tolist()) == [0, 1, 2, 3]  # a permutation of the reference targets...
    assert (source != torch.arange(4)).all()  # ...with no example keeping its own


def test_reference_per_example_is_used_when_set():
    got = make_targets("shuffled", hand_sae("relu"), reference="per_example", top_k=2)
    source = sources(got, PER_EXAMPLE_TOP2)
    assert sorted(source.tolist()) == [0, 1, 2, 3] and (source != torch.arange(4)).all()


def test_deterministic_per_seed_and_different_across_seeds():
    sae = hand_sae("relu")
    assert torch.equal(make_targets("shuffled", sae, seed=3, top_k=1), make_targets("shuffled", sae, seed=3, top_k=1))
    pairings = {tuple(sources(make_targets("shuffled", sae, seed=s, top_k=1), PER_CLASS_TOP1).tolist())
                for s in range(10)}
    assert len(pairings) > 1


@pytest.mark.parametrize("n", [2, 3, 5, 64, 1000])
def test_random_derangement_has_no_fixed_point(n):
    for seed in range(5):
        source = random_derangement(n, torch.Generator().manual_seed(seed))
        assert torch.equal(source.sort().values, torch.arange(n))
        assert (source != torch.arange(n)).all()


def test_two_examples_swap_targets():
    got = make_targets("shuffled", hand_sae("relu"), acts=ACTS[:2], labels=LABELS[:2], top_k=1)
    assert torch.allclose(got, PER_CLASS_TOP1[[1, 0]])


def test_one_example_cannot_be_shuffled():
    with pytest.raises(ArtifactError, match="sharpening=shuffled needs at least 2 training examples"):
        make_targets("shuffled", hand_sae("relu"), acts=ACTS[:1], labels=LABELS[:1])
