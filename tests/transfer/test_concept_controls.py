"""The reach diagnostics (reachable_margin, best_decoded_code), the dead share of the free space, the controls
of aligned_spatial (`position: reachable`, `anchors`), and compare.py's SAE settings on SAE methods only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.evaluation.compare import method_settings
from sae_ception.transfer.concept_method import (AlignedConceptConfig, ConceptSpaceMethod, best_decoded_code,
                                                 reachable_margin)
from sae_ception.transfer.config import ConceptConfig
from sae_ception.transfer.methods.aligned_spatial import AlignedSpatialConfig


# --- reachable_margin: a linear programme, checked by hand ------------------------------------------------------
def test_reachable_margin_by_hand():
    """Head rows w0 = (1, 0), w1 = (0, 1), w2 = (0.5, 0.5); target 2. Its lead over class 0 is 0.5(h1 − h0), over
    class 1 0.5(h0 − h1): their minimum is at most 0, reached at h0 = h1; a bias of 0.1 on the target adds 0.1."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    upper = torch.tensor([1.0, 1.0])
    assert reachable_margin(w, torch.zeros(3), 2, upper) == pytest.approx(0.0, abs=1e-9)
    assert reachable_margin(w, torch.tensor([0.0, 0.0, 0.1]), 2, upper) == pytest.approx(0.1, abs=1e-7)  # float32 bias


def test_reachable_margin_unreachable_and_bounded():
    """Target row 0 with bias −1, others read non-negative features with weight 1: the best is h = 0, margin −1.
    A target row reading feature 0 with weight 3 against rows of weight 1: (3 − 1)·u − 0 at h = (u, 0) → 2u."""
    w = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert reachable_margin(w, torch.tensor([0.0, -1.0]), 1, torch.tensor([5.0, 5.0])) == pytest.approx(-1.0, abs=1e-9)
    w = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert reachable_margin(w, torch.zeros(2), 1, torch.tensor([2.0, 7.0])) == pytest.approx(4.0, abs=1e-9)


# --- best_decoded_code: a local search through a decoder ----------------------------------------------------------
class _Identity(nn.Module):
    """An 'SAE' whose decoder is the identity on 2-dim codes."""

    def decode(self, z):
        return z


def test_best_decoded_code_finds_a_code_the_head_calls_the_target_and_reports_its_margin():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # target 2 beats both once h0, h1 > 0
    b = torch.tensor([0.0, 0.0, -1.0])
    margin, z = best_decoded_code(_Identity(), w, b, 2, torch.tensor([[0.1, 0.1], [0.0, 0.0]]), steps=50)
    assert margin > 0 and bool((z >= 0).all())
    logits = z @ w.T + b
    assert margin == pytest.approx(float(logits[2] - logits[:2].max()), abs=1e-5)  # the code's own hard margin


def test_best_decoded_code_cannot_beat_an_unreachable_target():
    """Target row never ahead for h >= 0 (its weights are the others' minus 1, its bias −1): every margin < 0."""
    w = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    margin, z = best_decoded_code(_Identity(), w, torch.tensor([0.0, -1.0]), 1, torch.tensor([[1.0, 2.0]]), steps=100)
    assert margin <= -1.0 + 1e-6 and margin == pytest.approx(-1.0, abs=1e-2)  # approached at h = 0
    assert bool((z >= 0).all())


# --- the free space's dead share -----------------------------------------------------------------------------------
def _ctx():
    ctx = SimpleNamespace(concept=ConceptConfig(), diagnostics={})
    ctx.report = lambda key, value: ctx.diagnostics.__setitem__(key, float(value))
    return ctx


def test_free_space_dead_fraction_is_the_free_directions_mass_on_latents_that_never_fire():
    """Codes on latents 0-2 only (3 and 4 never fire): the 2 least-used directions are e3 and e4 (dead share 1);
    3 directions add one inside the used span (live), so 2 of 3 unit masses are dead."""
    gen = torch.Generator().manual_seed(0)
    used = torch.zeros(30, 5)
    used[:, :3] = torch.rand(30, 3, generator=gen) + 0.1
    views = SimpleNamespace(used_a=used)
    ctx = _ctx()
    ConceptSpaceMethod.free_space(ctx, views, 2)
    assert ctx.diagnostics["free_space_dead_fraction"] == pytest.approx(1.0, abs=1e-9)
    ctx = _ctx()
    ConceptSpaceMethod.free_space(ctx, views, 3)
    assert ctx.diagnostics["free_space_dead_fraction"] == pytest.approx(2 / 3, abs=1e-9)


# --- aligned_spatial's controls -----------------------------------------------------------------------------------
def test_aligned_spatial_positions_are_validated():
    assert AlignedSpatialConfig().position == "carried"
    cfg = SimpleNamespace(sae=SimpleNamespace(width=lambda d: 24, d_sae=24),
                          model_a=SimpleNamespace(hidden_sizes=[16]), model_b=SimpleNamespace(hidden_sizes=[16]),
                          concept=ConceptConfig())
    with pytest.raises(ConfigError, match=r"^transfer\.x\.position='nowhere' is not valid; use one of carried, "
                                          r"reachable, anchors$"):
        AlignedSpatialConfig(position="nowhere").validate_for("x", cfg)
    for position in ("carried", "reachable", "anchors"):
        AlignedSpatialConfig(position=position).validate_for("x", cfg)


# --- compare.py: the SAEs' settings belong to the methods that read them ----------------------------------------
def test_compare_gives_sae_settings_only_to_methods_that_read_the_saes():
    settings = {"seed": 0, "sae.l1_coefficient": 0.05, "concept.sae_images_per_class": None,
                "concept.target_images": 100, "transfer.vector_space.steps": 50, "transfer.finetune_head.steps": 50}
    plain = method_settings(settings, "finetune_head")
    assert "sae.l1_coefficient" not in plain and "concept.sae_images_per_class" not in plain
    assert "concept.target_images" not in plain and plain["transfer.finetune_head.steps"] == 50
    sae = method_settings(settings, "vector_space", uses_saes=True)
    assert sae["sae.l1_coefficient"] == 0.05 and "concept.sae_images_per_class" in sae
    assert sae["concept.target_images"] == 100  # B's SAE trains on concept.target_images' k target images
    assert "transfer.finetune_head.steps" not in sae


def test_aligned_concept_config_refuses_a_bad_head_row():
    cfg = SimpleNamespace(sae=SimpleNamespace(width=lambda d: 24, d_sae=24),
                          model_a=SimpleNamespace(hidden_sizes=[16]), model_b=SimpleNamespace(hidden_sizes=[16]))
    with pytest.raises(ConfigError, match=r"^transfer\.x\.head_row='c' is not valid; use one of a, b$"):
        AlignedConceptConfig(head_row="c").validate_for("x", cfg)


# --- regressions of the correctness review -------------------------------------------------------------------------
def test_a_diverging_aligner_raises_the_callers_one_line_error():
    from sae_ception.errors import DivergenceError
    from sae_ception.transfer.concept_alignment import FeatureAligner, fit_aligner

    gen = torch.Generator().manual_seed(0)
    h_b, target = torch.rand(40, 6, generator=gen), torch.rand(40, 4, generator=gen)

    def diverged(how: str) -> DivergenceError:
        return DivergenceError(f"transfer.x.aligner_lr: diverged {how}")

    for lr in (1e10, 1e38):
        torch.manual_seed(0)
        with pytest.raises(DivergenceError, match=r"^transfer\.x\.aligner_lr: diverged "):
            fit_aligner(FeatureAligner(6, 4, 8, final_relu=False), h_b, target, lambda t: t, 20, lr, 8,
                        torch.Generator().manual_seed(1), diverged)


def test_aligner_residual_is_nan_when_the_target_codes_are_all_zero():
    from sae_ception.transfer.concept_alignment import FeatureAligner, fit_aligner

    torch.manual_seed(0)
    residual = fit_aligner(FeatureAligner(3, 2, 4), torch.rand(10, 3), torch.zeros(10, 2), lambda t: t, 2, 1e-3, 4,
                           torch.Generator().manual_seed(0))
    assert residual != residual  # NaN: nothing to be relative to


def test_free_directions_of_many_codes_are_taken_without_the_n_by_n_factor():
    """20,000 codes in 6 dims: the full SVD's 20,000 x 20,000 right factor would take 3.2 GB; this is instant."""
    from sae_ception.transfer.concept_alignment import free_directions

    codes = torch.zeros(20_000, 6)
    codes[:, :4] = torch.rand(20_000, 4, generator=torch.Generator().manual_seed(0))
    space = free_directions(codes, 2)
    assert space.directions_CK.shape == (6, 2) and space.energy < 1e-20


def test_the_concept_autoencoders_output_relu_clips_at_zero_in_the_raw_space_whatever_the_normalisation():
    from sae_ception.sae import build_sae
    from sae_ception.sae.concept_autoencoder import ConceptAutoencoderConfig

    torch.manual_seed(0)
    sae = build_sae(ConceptAutoencoderConfig(d_sae=4, normalize="standardize", decoder_output_relu=True), 6)
    acts = torch.relu(torch.randn(500, 6, generator=torch.Generator().manual_seed(1)))
    sae.set_normalization(acts)
    with torch.no_grad():
        sae.decoder[-1].bias.fill_(-50.0)  # every reconstruction far below 0 before the ReLU
        recon = sae.decode(torch.rand(30, 4) * 5)
    assert float(recon.min()) >= 0.0 and float(recon.max()) < 1e-6  # clipped at 0 (to rounding), not at the mean (~0.4)
