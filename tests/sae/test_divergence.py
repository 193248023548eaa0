"""SAE training that diverges stops with one line naming sae.lr, and a trained SAE whose latents all died is
reported as degenerate (issue 11, item 2)."""

import math
import re

import pytest
import torch

from sae_ception.errors import DivergenceError
from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.sae import SAE_TYPES, train_sae

from tests.sae.helpers import LINEAR_SAE_TYPES, make_sae, sparse_data

DIVERGED_EXPLAINED_VARIANCE = -1.0  # sae.trainer's rule (checked below)
ONE_LINE = r"^sae\.lr=[^ ]+: {what} diverged .+; lower sae\.lr$"


def _train(sae_type, accelerator, acts=None, what=None, **settings):
    settings = {"d_sae": 64, "epochs": 2, "batch_size": 64, "log_every": 10, **settings}
    sae = make_sae(sae_type, d_in=16, **settings)
    acts = sparse_data(n=512) if acts is None else acts
    named = {"what": what} if what else {}
    return sae, train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False, **named)


@pytest.mark.parametrize("sae_type", SAE_TYPES.names())
@pytest.mark.parametrize("lr", [1e30, 1e25])
@pytest.mark.parametrize("log_every", [1, 10, 10**9])  # every step, some steps, only the last
def test_non_finite_losses_stop_training_naming_the_step_and_sae_lr(sae_type, lr, log_every, accelerator):
    with pytest.raises(DivergenceError) as info:
        _train(sae_type, accelerator, lr=lr, log_every=log_every, what="SAE training of cycle 3")
    message = str(info.value)
    assert re.match(ONE_LINE.format(what="SAE training of cycle 3"), message) and "\n" not in message, message
    assert message.startswith(f"sae.lr={lr:g}: ") and re.search(r"diverged at step \d+ \(\w+ (nan|inf|-inf)\)", message)


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)  # the concept autoencoder's NaN comes first (caught above)
@pytest.mark.parametrize("lr", [10.0, 1e3, 1e6])
def test_finite_but_absurd_reconstructions_are_divergence(sae_type, lr, accelerator):
    """sae.lr=1e6 used to finish with EV -1e30 on the test split: the trained SAE now has to beat (by the rule's
    margin) reconstructing every training row by their mean."""
    match = (r"diverged \(explained variance -[0-9.e+]+ on the training rows, below -1: reconstructions far worse "
             r"than the rows' mean\); lower sae\.lr$")
    with pytest.raises(DivergenceError, match=match):
        _train(sae_type, accelerator, lr=lr)


def test_weights_that_turn_non_finite_after_the_last_logged_loss_are_caught(accelerator):
    """NaN weights persist, so the end-of-training check catches what no logged loss showed."""
    sae = make_sae("relu", d_in=16, d_sae=64, epochs=1, batch_size=64, log_every=10**9)

    def poison(metrics, step):  # the last step's losses were finite; its update made a weight NaN
        with torch.no_grad():
            sae.b_enc_F[3] = float("nan")

    with pytest.raises(DivergenceError, match=r"^sae\.lr=0\.001: SAE training diverged by step 8 \(b_enc_F holds NaN "
                                              r"or inf\); lower sae\.lr$"):
        train_sae(sae, sparse_data(n=512), sae.cfg, accelerator=accelerator, seed=0, show_progress=False, log_fn=poison)


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)  # a one-epoch run is too short for the concept autoencoder
def test_healthy_training_at_a_high_learning_rate_is_not_divergence(sae_type, accelerator):
    _, stats = _train(sae_type, accelerator, lr=0.1)
    assert stats["final_fit"]["explained_variance"] > 0.5 and not stats["degenerate"]


def test_a_diverging_calibration_trial_stops_the_search_naming_the_trial(accelerator):
    from sae_ception.sae.calibration import train_calibrated

    acts = sparse_data(n=1024)
    cfg = make_sae("relu", d_in=16, d_sae=64, epochs=2, batch_size=64, lr=1e30, target_l0=5.0).cfg
    with pytest.raises(DivergenceError, match=r"^sae\.lr=1e\+30: SAE training of cycle 0 \(calibration trial "
                                              r"l1_coefficient=0\.01\) diverged at step \d+ .*; lower sae\.lr$"):
        train_calibrated(cfg, acts[:768], acts[768:], accelerator=accelerator, seed=0, what="SAE training of cycle 0")


# --- degenerate SAEs: finite, saved, but reported ---------------------------------------------------------------

@pytest.mark.parametrize("sae_type", SAE_TYPES.names())
def test_constant_activations_give_a_degenerate_sae_with_undefined_explained_variance(sae_type, accelerator):
    """A dead target layer (all rows equal) used to read `mse 0, EV 1.000, dead 100%`: a perfect SAE."""
    for acts in (torch.zeros(256, 16), torch.full((256, 16), 0.3)):
        sae, stats = _train(sae_type, accelerator, acts=acts)
        quality = sae_quality(sae, acts)
        if type(sae).data_fitted_init:
            assert stats["degenerate"] and stats["final_fit"]["dead_fraction"] == 1.0
        else:  # no fitted init (the paper's SAE): b_dec is not started at the rows' mean nor subtracted before
            # encoding, so its random b_enc keeps some latents on; the rows being equal, each is on for all or none
            assert quality["dead_fraction"] + quality["always_on_fraction"] == pytest.approx(1.0)
        assert stats["final_fit"]["explained_variance"] is None
        assert math.isnan(quality["explained_variance"])


@pytest.mark.parametrize("sae_type", ["relu", "jumprelu"])
def test_latents_that_never_fire_give_a_degenerate_sae_not_a_divergence(sae_type, accelerator):
    """Encoder biases far below every pre-activation: no latent ever fires (nor gets a gradient). The SAE then
    reconstructs every row by b_dec, about their mean: finite and not diverged, but degenerate."""
    sae = make_sae(sae_type, d_in=16, d_sae=64, epochs=2, batch_size=64, log_every=10)
    acts = sparse_data(n=512)
    original = sae.set_normalization

    def silenced(acts_ND):  # after the initialisation, which fits the encoder to the data
        original(acts_ND)
        sae.b_enc_F.data.fill_(-100.0)

    sae.set_normalization = silenced
    stats = train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert stats["degenerate"] and stats["final_fit"]["l0"] == 0 and stats["dead_fraction"] == 1.0
    assert DIVERGED_EXPLAINED_VARIANCE < stats["final_fit"]["explained_variance"] <= 0.01  # about the mean's


def test_explained_variance_by_hand():
    from sae_ception.evaluation.sae_quality import explained_variance
    from sae_ception.sae import trainer

    assert trainer.DIVERGED_EXPLAINED_VARIANCE == DIVERGED_EXPLAINED_VARIANCE
    assert explained_variance(sse=1.0, spread=4.0, sum_sq=10.0) == pytest.approx(0.75)
    assert explained_variance(sse=12.0, spread=4.0, sum_sq=10.0) == pytest.approx(-2.0)
    assert math.isnan(explained_variance(sse=0.0, spread=0.0, sum_sq=0.0))  # all zeros
    assert math.isnan(explained_variance(sse=0.0, spread=1e-20, sum_sq=1e3))  # constant up to rounding
    assert explained_variance(sse=0.0, spread=1e-6, sum_sq=1e3) == 1.0


def test_fit_on_training_rows_matches_sae_quality(accelerator):
    from sae_ception.sae.trainer import fit_on_training_rows

    sae, _ = _train("topk", accelerator, lr=1e-2)
    acts = sparse_data(n=512)
    fit, quality = fit_on_training_rows(sae, acts, rows_per_chunk=100), sae_quality(sae, acts)
    assert fit["rows"] == 512
    for key in ("mse", "explained_variance", "l0", "dead_fraction"):
        assert fit[key] == pytest.approx(quality[key], rel=1e-6, abs=1e-9), key
