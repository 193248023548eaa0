"""The SAE trainer: it learns sparse structure, is bit-reproducible, logs, warms up and tracks dead latents."""

import pytest
import torch

from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.sae import SAE_TYPES, train_sae
from sae_ception.sae.trainer import FiringTracker

from tests.sae.helpers import make_sae, sparse_data

# Per-type settings that fit the synthetic data (3 active of 32 directions); new types fall back to defaults.
FIT_SETTINGS = {"relu": {"l1_coefficient": 1e-2}, "topk": {"k": 4}}


def _fit(sae_type, accelerator, seed=0, log_fn=None, **overrides):
    settings = {"d_sae": 64, "epochs": 8, "batch_size": 64, "lr": 1e-2, "log_every": 10,
                **FIT_SETTINGS.get(sae_type, {}), **overrides}
    sae = make_sae(sae_type, d_in=16, seed=seed, **settings)
    acts = sparse_data()
    stats = train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=seed, log_fn=log_fn, show_progress=False)
    return sae, acts, stats


@pytest.mark.parametrize("sae_type", SAE_TYPES.names())
def test_learns_sparse_synthetic_data(sae_type, accelerator):
    sae, acts, stats = _fit(sae_type, accelerator)
    quality = sae_quality(sae, acts)
    assert quality["explained_variance"] > 0.8 and quality["l0"] < sae.d_sae / 2, quality
    assert stats["steps"] == 8 * 32 and stats["explained_variance"] > 0.8
    if type(sae).unit_decoder_rows:  # (the paper's SAE has free decoder rows: their norms are whatever training left)
        norms = sae.W_dec_FD.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize("sae_type", SAE_TYPES.names())
def test_same_seed_gives_identical_weights(sae_type, accelerator):
    first, _, _ = _fit(sae_type, accelerator, epochs=2)
    again, _, _ = _fit(sae_type, accelerator, epochs=2)
    other, _, _ = _fit(sae_type, accelerator, epochs=2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))


def test_log_fn_gets_metrics_every_log_every_steps(accelerator):
    calls = []
    _fit("topk", accelerator, epochs=1, log_every=10, log_fn=lambda metrics, step: calls.append((step, metrics)))
    assert [step for step, _ in calls] == [10, 20, 30, 32]  # and the last step
    keys = set(calls[0][1])
    assert {"mse", "total", "l0", "explained_variance", "dead_fraction", "lr"} <= keys
    assert all(isinstance(v, (int, float)) for _, metrics in calls for v in metrics.values())


@pytest.mark.parametrize("sae_type", ["relu", "topk"])  # (JumpReLU's L0 is a loss term: every step has it)
def test_training_l0_is_the_mean_of_the_last_epochs_logged_steps(sae_type, accelerator):
    """L0 is counted on logged steps only; the other terms are still averaged over every step."""
    calls = []
    _, _, stats = _fit(sae_type, accelerator, epochs=2, log_every=5,
                       log_fn=lambda metrics, step: calls.append((step, metrics)))
    logged_steps = [step for step, _ in calls]
    assert logged_steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 64]  # 32 steps an epoch, and the last
    last_epoch = [metrics["l0"] for step, metrics in calls if step > 32]
    assert stats["l0"] == pytest.approx(sum(last_epoch) / len(last_epoch), rel=1e-5)
    assert 0 < stats["l0"] < 32


def test_lr_warms_up_linearly(accelerator):
    calls = []
    _fit("relu", accelerator, epochs=1, log_every=1, lr=1e-2, lr_warmup_steps=4,
         log_fn=lambda metrics, step: calls.append(metrics["lr"]))
    assert calls[:6] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def test_dead_latents_reach_the_topk_aux_loss(accelerator):
    """Latents forced silent become dead after `dead_after_examples`, and then AuxK is non-zero."""
    calls = []
    sae = make_sae("topk", d_in=16, d_sae=64, k=4, dead_after_examples=128, batch_size=64, log_every=1)
    with torch.no_grad():
        sae.b_enc_F[32:] = -100.0
    train_sae(sae, sparse_data(n=512), sae.cfg, accelerator=accelerator, seed=0,
              log_fn=lambda metrics, step: calls.append(metrics), show_progress=False)
    assert calls[0]["aux"] == 0 and calls[0]["dead_fraction"] == 0
    assert calls[-1]["dead_fraction"] >= 0.5 and calls[-1]["aux"] > 0


def test_firing_tracker_counts_examples_since_last_fire():
    tracker = FiringTracker(d_sae=3, dead_after=5, device=torch.device("cpu"))
    tracker.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert tracker.since_fired_F.tolist() == [0, 2, 2]
    tracker.update(torch.tensor([[0.0, 0.0, 2.0]] * 3))
    assert tracker.since_fired_F.tolist() == [3, 5, 0]
    assert tracker.dead_F.tolist() == [False, True, False]


def test_no_grad_clip_works(accelerator):
    _, _, stats = _fit("relu", accelerator, epochs=1, grad_clip=None)
    assert stats["steps"] == 32
