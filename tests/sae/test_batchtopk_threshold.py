"""BatchTopK's inference threshold is estimated from the trained weights, so inference L0 on the training rows
is k after short and long runs alike, and the checkpoint carries it (issue 11, item 3)."""

import pytest
import torch

from sae_ception.sae import load_sae, train_sae
from sae_ception.sae import base

from tests.sae.helpers import make_sae, sparse_data


def _l0(sae, acts):
    with torch.no_grad():
        return (sae.encode(acts) != 0).sum(-1).float().mean().item()


def test_top_count_threshold_by_hand():
    from sae_ception.sae.batchtopk import top_count_threshold

    values = torch.tensor([[3.0, 1.0], [2.0, -1.0]])
    assert top_count_threshold([values], 1) == pytest.approx(2.5)  # midway between 3 and 2
    assert top_count_threshold([values], 2) == pytest.approx(1.5)
    assert top_count_threshold([values], 3) == pytest.approx(0.5)  # midway between 1 and 0 (-1 is below ReLU's 0)
    assert top_count_threshold([values], 4) == 0.0  # fewer than 4 positive values: every positive one is kept
    assert top_count_threshold([values], 9) == 0.0  # more than there are values
    assert top_count_threshold([], 2) == 0.0


def test_top_count_threshold_streams_any_chunking():
    from sae_ception.sae.batchtopk import top_count_threshold

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(300, 40, generator=gen)
    whole = top_count_threshold([values], 1200)
    for rows in (1, 7, 64, 300):
        assert top_count_threshold(values.split(rows), 1200) == pytest.approx(whole, abs=1e-7)
    assert (values > whole).sum() == 1200


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("epochs", [1, 30])  # 4 steps (the threshold used to stay at its initial value) and 120
def test_inference_l0_on_the_training_rows_is_k(k, epochs, accelerator):
    acts = sparse_data(n=256)
    sae = make_sae("batchtopk", d_in=16, d_sae=64, k=k, epochs=epochs, batch_size=64, lr=1e-2, log_every=10)
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert not sae.training and sae.threshold > 0
    assert _l0(sae, acts) == pytest.approx(k, abs=0.01)  # exact up to ties: every row is read
    held_out = sparse_data(n=1024, seed=0)[256:]  # the same directions, other rows
    assert abs(_l0(sae, held_out) - k) < 0.25 * k


def test_many_rows_use_a_fixed_seed_sample_and_still_give_k(accelerator, monkeypatch):
    """More training rows than FIT_ROWS: the threshold comes from a fixed sample (memory bounded by it), and L0
    on every training row is still about k."""
    from sae_ception.sae.batchtopk import top_count_threshold

    monkeypatch.setattr(base, "FIT_ROWS", 512)
    acts = sparse_data(n=4096)
    sae = make_sae("batchtopk", d_in=16, d_sae=64, k=4, epochs=1, batch_size=256, lr=1e-2)
    stats = train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert stats["final_fit"]["rows"] == 512 and stats["final_fit"]["l0"] == pytest.approx(4, abs=0.01)
    assert abs(_l0(sae, acts) - 4) < 0.2
    sampled = torch.cat(list(base.fit_rows(acts, 100, torch.device("cpu"))))
    assert len(sampled) == 512 and torch.equal(sampled, torch.cat(list(base.fit_rows(acts, 512, torch.device("cpu")))))
    with torch.no_grad():
        expected = top_count_threshold([sae.pre_activation(sae.normalize(sampled))], 4 * 512)
    assert sae.threshold.item() == pytest.approx(expected, rel=1e-6)


def test_the_checkpoint_carries_the_estimated_threshold(accelerator, tmp_path):
    acts = sparse_data(n=256)
    sae = make_sae("batchtopk", d_in=16, d_sae=64, k=4, epochs=1, batch_size=64, lr=1e-2)
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert loaded.threshold.item() == sae.threshold.item() > 0
    assert _l0(loaded, acts) == pytest.approx(4, abs=0.01)
