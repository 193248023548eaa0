"""Every sharpener on every registered SAE type: right shape, finite, deterministic given the generator."""

import pytest
import torch

from sae_ception.sae import SAE_TYPES
from sae_ception.sharpening import SHARPENERS
from tests.sae.helpers import make_sae, sparse_data
from tests.sharpening.helpers import make_targets


@pytest.fixture(scope="module")
def data():
    acts = sparse_data(n=96, d=8, n_dirs=16)
    return acts, torch.arange(96) % 3


@pytest.mark.parametrize("sae_type", SAE_TYPES.names())
@pytest.mark.parametrize("kind", SHARPENERS.names())
def test_targets_are_finite_and_reproducible(sae_type, kind, data):
    acts, labels = data
    sae = make_sae(sae_type, d_in=8)
    sae.set_normalization(acts)
    sae.finish_training_(acts)  # as after training (BatchTopK estimates its inference threshold)
    sae.eval()  # as loaded for sharpening: inference behaviour, independent of the batch
    # batch_size 40 splits the 96 rows unevenly: batching must not change the result
    first = make_targets(kind, sae, acts=acts, labels=labels, seed=1, batch_size=40)
    again = make_targets(kind, sae, acts=acts, labels=labels, seed=1)
    assert first.shape == acts.shape and bool(torch.isfinite(first).all())
    assert torch.allclose(first, again, atol=1e-6)
