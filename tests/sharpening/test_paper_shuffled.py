"""paper_shuffled: another example's code under this example's reference mask (the paper code's pairing)."""

import pytest
import torch

from sae_ception.errors import ArtifactError
from tests.sharpening.helpers import ACTS, HAND_SAE_TYPES, LABELS, hand_sae, make_targets


@pytest.mark.parametrize("sae_type", HAND_SAE_TYPES)
def test_two_examples_of_two_classes_by_hand(sae_type):
    # examples 1 (class 0, codes [1.5, 0, 1.0]) and 2 (class 1, codes [0.5, 3.5, 0]); per_class top 1 keeps latent 0
    # for class 0 and latent 1 for class 1. The only derangement of 2 swaps them:
    #   example of class 0 takes code [0.5, 3.5, 0] on latent 0 -> [0.5, 0, 0] -> decode (+0.5) [1.0, 0.5, 0.5]
    #   example of class 1 takes code [1.5, 0, 1.0] on latent 1 -> [0, 0, 0]   -> decode        [0.5, 0.5, 0.5]
    got = make_targets("paper_shuffled", hand_sae(sae_type), acts=ACTS[1:3], labels=LABELS[1:3], top_k=1)
    assert torch.allclose(got, torch.tensor([[1.0, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    # `shuffled` swaps the whole targets instead: [0.5, 4.0, 0.5] and [2.0, 0.5, 0.5]
    whole = make_targets("shuffled", hand_sae(sae_type), acts=ACTS[1:3], labels=LABELS[1:3], top_k=1)
    assert torch.allclose(whole, torch.tensor([[0.5, 4.0, 0.5], [2.0, 0.5, 0.5]]))


def test_masks_are_the_examples_own_and_codes_come_from_others():
    sae = hand_sae("relu")
    got = make_targets("paper_shuffled", sae, top_k=1, seed=5) - 0.5  # the kept codes
    class_latent = torch.tensor([0, 0, 1, 1])  # class 0 keeps latent 0, class 1 latent 1 (helpers.PER_CLASS_TOP1)
    others = torch.ones(4, 3, dtype=torch.bool)
    others[torch.arange(4), class_latent] = False
    assert torch.all(got[others] == 0)  # nothing outside the example's own class mask
    codes = torch.relu(ACTS - 0.5)
    kept = got[torch.arange(4), class_latent]
    own = codes[torch.arange(4), class_latent]
    assert not torch.allclose(kept, own)  # not the example's own code
    for i in range(4):  # each kept value is some OTHER example's code on that latent
        candidates = torch.cat([codes[:i], codes[i + 1:]])[:, class_latent[i]]
        assert torch.isclose(candidates, kept[i]).any()


def test_deterministic_per_seed():
    sae = hand_sae("relu")
    assert torch.equal(make_targets("paper_shuffled", sae, seed=2, top_k=1),
                       make_targets("paper_shuffled", sae, seed=2, top_k=1))


def test_one_example_cannot_be_shuffled():
    with pytest.raises(ArtifactError, match="sharpening=paper_shuffled needs at least 2"):
        make_targets("paper_shuffled", hand_sae("relu"), acts=ACTS[:1], labels=LABELS[:1])
