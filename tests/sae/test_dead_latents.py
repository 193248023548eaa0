"""A latent silent for a whole epoch is dead even when the run is shorter than `dead_after_examples`, for AuxK
and for the reported dead fraction (issue 11, item 4). Long runs keep `dead_after_examples`'s meaning
(test_trainer.py::test_dead_latents_reach_the_topk_aux_loss)."""

import pytest
import torch

from sae_ception.sae import train_sae
from sae_ception.sae.trainer import FiringTracker

from tests.sae.helpers import LINEAR_SAE_TYPES, make_sae, sparse_data


def test_dead_window_by_hand():
    from sae_ception.sae.trainer import dead_window

    assert dead_window(dead_after_examples=10000, rows_per_epoch=1258) == 1258  # short runs: one epoch
    assert dead_window(dead_after_examples=128, rows_per_epoch=512) == 128  # long epochs: the setting
    assert dead_window(dead_after_examples=512, rows_per_epoch=512) == 512
    assert dead_window(dead_after_examples=10, rows_per_epoch=0) == 1


def test_a_latent_silent_for_the_window_is_dead_and_one_firing_once_per_window_is_not():
    from sae_ception.sae.trainer import dead_window

    tracker = FiringTracker(d_sae=3, dead_after=dead_window(10000, rows_per_epoch=4), device=torch.device("cpu"))
    tracker.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))  # 2 rows: nobody dead yet
    assert tracker.dead_F.tolist() == [False, False, False]
    tracker.update(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))  # a whole epoch (4 rows) seen
    assert tracker.dead_F.tolist() == [False, True, False]  # latent 1 fired on none of them


def _silence_half(sae):
    """Latents 32.. get encoder biases far below any pre-activation: they never fire."""
    original = sae.set_normalization

    def silenced(acts_ND):
        original(acts_ND)
        sae.b_enc_F.data[32:] = -100.0

    sae.set_normalization = silenced


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)  # silences latents through b_enc_F
@pytest.mark.parametrize("epochs", [1, 3])
def test_latents_that_never_fire_in_a_short_run_are_reported_dead(sae_type, epochs, accelerator):
    """512 rows an epoch, dead_after_examples 10000 (longer than the whole run): the silenced half is dead."""
    sae = make_sae(sae_type, d_in=16, d_sae=64, epochs=epochs, batch_size=64, lr=1e-3, dead_after_examples=10000)
    _silence_half(sae)
    stats = train_sae(sae, sparse_data(n=512), sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert stats["dead_fraction"] >= 0.5
    assert stats["dead_window"] == 512 and stats["final_fit"]["dead_fraction"] >= 0.5


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk"])
def test_auxk_starts_after_one_epoch_of_silence_in_a_short_run(sae_type, accelerator):
    calls = []
    sae = make_sae(sae_type, d_in=16, d_sae=64, k=4, epochs=3, batch_size=64, log_every=1, dead_after_examples=10000)
    _silence_half(sae)
    train_sae(sae, sparse_data(n=512), sae.cfg, accelerator=accelerator, seed=0, show_progress=False,
              log_fn=lambda metrics, step: calls.append((step, metrics)))
    first_epoch = [m for step, m in calls if step < 8]  # 8 steps an epoch; the window closes at its end
    later = [m for step, m in calls if step > 8]
    assert all(m["aux"] == 0 and m["dead_fraction"] == 0 for m in first_epoch)
    assert all(m["dead_fraction"] >= 0.5 and m["aux"] > 0 for m in later)
