"""The concept-space mathematics of the SAE-based transfer methods and the concept editor, on hand-built cases:
Procrustes between class centroids with a known rotation (and its limits with few centroids), the free space of
a concept space (SVD), linear CKA, the learned feature aligner, every gate / injection / blend of the editor
against its formula, the editor attached to A (keys, parameter counts), the multi-objective editor training
(what it may change, what it counts, that it can teach, divergence), the SAEs' images, and the shared base of the
SAE methods (views, align, carry, free space)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from sae_ception.data import DataSplits, Split
from sae_ception.errors import DivergenceError
from sae_ception.models.mlp import MLPClassifier, MLPConfig
from sae_ception.sae import build_sae, train_sae
from sae_ception.sae.concept_autoencoder import ConceptAutoencoderConfig
from sae_ception.transfer.concept_alignment import FeatureAligner, fit_aligner, free_directions, linear_cka
from sae_ception.transfer.concept_method import AlignedConceptConfig, ConceptSpaceMethod, free_dims
from sae_ception.transfer.concepts import ConceptSAEs, SAEImages, centroids, encode, sae_images
from sae_ception.transfer.config import ConceptConfig
from sae_ception.transfer.context import TransferContext
from sae_ception.transfer.data import TransferData, class_order
from sae_ception.transfer.editor import (AdaptiveBlend, ConceptEditor, ConstantGate, ConstantInjection,
                                         FreeSpaceInjection, GatedBlend, LearnedBlend, LearnedGate, MixedGate, NoBlend,
                                         SelectedInjection, SpatialGate, SpatialInjection, attach, editor_of)
from sae_ception.transfer.editor_training import EditorTraining, train_editor
from sae_ception.transfer.layers import penultimate
from sae_ception.transfer.measures import parameters_changed
from sae_ception.transfer.pathways import fit_alignment

TARGET = 4
D = 6  # input features = hidden width = classes of the toy models
PER_CLASS = 12  # training images of each class of the toy splits


# --- helpers ------------------------------------------------------------------------------------------------------
def random_orthogonal(dim: int, seed: int) -> torch.Tensor:
    """A random orthogonal matrix (float64), QR of a Gaussian with the signs fixed (Haar, not symmetric)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def gaussian(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthonormal_row_basis(m: torch.Tensor) -> torch.Tensor:
    """(C, r) orthonormal basis of the span of the rows of m (r, C) of full row rank, by QR."""
    return torch.linalg.qr(m.T.double())[0]


def images(per_class: int, seed: int) -> Split:
    """Class c: e_c plus uniform noise in [0, 0.3) on every feature (every feature > 0: no ReLU ever clips)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(D).repeat_interleave(per_class)
    return Split(torch.eye(D)[y] + 0.3 * torch.rand(len(y), D, generator=g), y)


def toy_data(target_images: int = 100, sae_images_per_class=None) -> TransferData:
    splits = DataSplits(images(PER_CLASS, 0), images(2, 1), images(PER_CLASS, 2), num_classes=D, input_shape=(D,),
                        source="toy")
    return TransferData(splits, ConceptConfig(target_images=target_images, sae_images_per_class=sae_images_per_class))


def model_a() -> MLPClassifier:
    """Hidden layer = the input (identity); head: 3 e_c for A's classes 0-3; the target's row reads feature 5 (a
    feature the target images hardly have, so A does not call them the target: margin > 0), class 5 never wins
    (zero row, bias -1). Frozen, as the stage hands A to a method."""
    model = MLPClassifier(MLPConfig(hidden_sizes=[D]), input_dim=D, num_classes=D)
    with torch.no_grad():
        model.blocks[0][0].weight.copy_(torch.eye(D))
        model.blocks[0][0].bias.zero_()
        head = 3 * torch.eye(D)
        head[TARGET] = 0
        head[TARGET, 5] = 3.0
        head[5] = 0
        model.head.weight.copy_(head)
        model.head.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, -1]))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def identity_sae(c: int = D):
    """A concept autoencoder (d_in = c, d_sae = c, hidden_factor 1) whose four Linears are the identity with zero
    bias: encode and decode are the identity on non-negative inputs, so editor formulas are exact by hand."""
    torch.manual_seed(0)
    sae = build_sae(ConceptAutoencoderConfig(d_sae=c, hidden_factor=1), c)
    with torch.no_grad():
        for linear in (*sae.encoder[::2], *sae.decoder[::2]):
            linear.weight.copy_(torch.eye(c))
            linear.bias.zero_()
    return sae.eval()


def tiny_sae(d_in: int = D, c: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return build_sae(ConceptAutoencoderConfig(d_sae=c), d_in).eval()


def context(data: TransferData, model=None, name: str = "editor", seed: int = 0, saes=None,
            settings=None, sample_seed=None) -> TransferContext:
    model = model if model is not None else model_a()
    run = SimpleNamespace(accelerator=Accelerator(cpu=True), cfg=None)
    return TransferContext(run, name, settings or AlignedConceptConfig(), model, model, data,
                           torch.Generator().manual_seed(seed), sample_seed=sample_seed, saes=saes)


def low_rank_rows(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    """n non-negative rows in a `rank`-dimensional subspace of R^d: uniform coefficients on uniform basis rows."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, rank, generator=g) @ torch.rand(rank, d, generator=g)


# --- 1. Procrustes on concept centroids ----------------------------------------------------------------------------
def test_procrustes_recovers_a_known_rotation_from_centroids_in_general_position():
    """5 centroids in 4 dims span the space: C_B = C_A Qᵀ gives back R = Q exactly (C_B R = C_A, residual 0)."""
    c_a = gaussian(5, 4, seed=0)
    q = random_orthogonal(4, seed=1)
    c_b = c_a @ q.T
    alignment = fit_alignment(c_b, c_a)
    r = alignment.rotation
    assert r.dtype == torch.float64 and r.shape == (4, 4)
    torch.testing.assert_close(c_b @ r, c_a, atol=1e-10, rtol=0)
    torch.testing.assert_close(r, q, atol=1e-10, rtol=0)
    torch.testing.assert_close(r.T @ r, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert alignment.residual < 1e-12
    assert torch.equal(alignment.mean_a, torch.zeros(4, dtype=torch.float64))  # no centring by default
    assert not torch.allclose(r, torch.eye(4, dtype=torch.float64), atol=0.1)  # a real rotation was found


def test_procrustes_on_noisy_centroids_is_the_svd_solution_and_its_residual_the_hand_formula():
    """With noise: R = U Vᵀ of the SVD of C_Bᵀ C_A (the closed form, by numpy here), the residual is
    ‖C_B R − C_A‖_F / ‖C_A‖_F, and R fits at least as well as the true rotation Q."""
    c_a = gaussian(5, 4, seed=2)
    q = random_orthogonal(4, seed=3)
    c_b = c_a @ q.T + 0.05 * gaussian(5, 4, seed=4)
    alignment = fit_alignment(c_b, c_a)
    u, _, vt = np.linalg.svd(c_b.numpy().T @ c_a.numpy())
    np.testing.assert_allclose(alignment.rotation.numpy(), u @ vt, atol=1e-10)
    by_hand = np.linalg.norm(c_b.numpy() @ u @ vt - c_a.numpy()) / np.linalg.norm(c_a.numpy())
    assert alignment.residual == pytest.approx(by_hand, rel=1e-12)
    with_q = float(torch.linalg.norm(c_b @ q - c_a) / torch.linalg.norm(c_a))
    assert 0 < alignment.residual <= with_q
    assert alignment.residual < 0.1  # small noise, small residual


def test_procrustes_with_two_centroids_in_six_dims_maps_them_exactly_but_the_rotation_is_not_determined():
    """LIMITATION: 2 shared-class centroids span 2 of the 6 dimensions. Procrustes then maps both centroids
    exactly (residual 0), but any rotation of the 4-dim complement of their span can be composed with R and maps
    them as well: R is not unique, and what it does to a code outside the centroids' span (e.g. B's target
    concept) is arbitrary. A residual of 0 on 2 centroids says nothing about how well R maps other codes."""
    c_a = gaussian(2, 6, seed=5)
    q = random_orthogonal(6, seed=6)
    c_b = c_a @ q.T
    alignment = fit_alignment(c_b, c_a)
    r = alignment.rotation
    torch.testing.assert_close(c_b @ r, c_a, atol=1e-10, rtol=0)
    assert alignment.residual < 1e-12
    torch.testing.assert_close(r.T @ r, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(torch.linalg.norm(r - q)) > 0.1  # not the rotation that made C_B
    # another exact solution: rotate the complement of the row span of C_B, then apply Q
    basis = torch.linalg.qr(torch.cat([c_b.T, gaussian(6, 4, seed=7)], 1))[0]  # first 2 columns: span of C_B's rows
    inner = torch.eye(6, dtype=torch.float64)
    inner[2:, 2:] = random_orthogonal(4, seed=8)
    other = basis @ inner @ basis.T @ q
    torch.testing.assert_close(c_b @ other, c_a, atol=1e-10, rtol=0)
    outside = gaussian(1, 6, seed=9)  # a B code outside the centroids' span is carried differently
    assert float(torch.linalg.norm(outside @ other - outside @ r)) > 0.1


def test_procrustes_residual_is_nan_when_a_is_all_zero():
    """‖C_A‖_F = 0: the relative residual is undefined (NaN), not a huge number from dividing by a clamp."""
    alignment = fit_alignment(gaussian(3, 4, seed=10), torch.zeros(3, 4, dtype=torch.float64))
    assert math.isnan(alignment.residual)


def test_centroids_are_class_means_in_the_given_order():
    codes = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0]])
    labels = torch.tensor([2, 2, 7, 5])
    torch.testing.assert_close(centroids(codes, labels, [5, 2]), torch.tensor([[0.0, 4.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="no code of class 3"):
        centroids(codes, labels, [2, 3])


# --- 2. free space ------------------------------------------------------------------------------------------------
def _codes_in_subspace(n: int = 40, c: int = 7, rank: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    basis = gaussian(rank, c, seed=seed)
    return gaussian(n, rank, seed=seed + 1) @ basis, basis


def test_free_directions_of_codes_in_a_known_subspace_are_orthogonal_to_every_code():
    codes, basis = _codes_in_subspace()
    space = free_directions(codes, 4)
    f = space.directions_CK
    assert f.shape == (7, 4) and f.dtype == torch.float64
    torch.testing.assert_close(f.T @ f, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float((codes @ f).abs().max()) < 1e-12
    assert float((basis @ f).abs().max()) < 1e-12  # orthogonal to the whole used subspace
    assert space.energy < 1e-25
    s = space.singular_values
    assert s.shape == (7,) and torch.all(s[:-1] >= s[1:])  # descending
    assert float(s[2]) > 1.0 and float(s[3:].abs().max()) < 1e-12  # rank 3


def test_free_space_energy_is_the_share_of_squared_singular_values_it_takes():
    """k = 5 > 7 − 3 takes the weakest used direction too: energy = s₃² / Σ s² (s₃ the 3rd singular value)."""
    codes, _ = _codes_in_subspace()
    space = free_directions(codes, 5)
    s = space.singular_values
    assert space.energy == pytest.approx(float(s[2] ** 2 / (s ** 2).sum()), rel=1e-9)
    assert space.energy > 1e-3
    full = free_directions(codes, 7)
    assert full.energy == pytest.approx(1.0, rel=1e-12)


def test_free_directions_with_fewer_codes_than_dimensions():
    codes = gaussian(2, 5, seed=11)
    space = free_directions(codes, 3)
    assert space.singular_values.shape == (2,)
    assert float((codes @ space.directions_CK).abs().max()) < 1e-12 and space.energy < 1e-25
    assert free_directions(torch.zeros(3, 4), 2).energy == 0.0  # no used code at all: nothing occupied


@pytest.mark.parametrize("k", [0, -1, 8])
def test_free_directions_k_out_of_range_is_refused(k):
    codes, _ = _codes_in_subspace()
    with pytest.raises(ValueError, match=rf"k={k} must be in 1\.\.7"):
        free_directions(codes, k)


def test_injection_along_free_directions_keeps_each_used_codes_projection_exactly():
    """In code space: P_used (z + F α) = P_used z for every used code z, whatever α (P_used: the orthogonal
    projection onto the used codes' span, built from the known basis, not from the SVD)."""
    codes, basis = _codes_in_subspace()
    space = free_directions(codes, 4)
    used = orthonormal_row_basis(basis)
    project_used = used @ used.T
    alpha = gaussian(len(codes), 4, seed=12) * 10
    moved = codes + alpha @ space.directions_CK.T
    torch.testing.assert_close(moved @ project_used, codes @ project_used, atol=1e-10, rtol=0)
    assert float(torch.linalg.norm(moved - codes)) > 10  # the codes did move, only off the used span
    torch.testing.assert_close(space.project(moved - codes), moved - codes, atol=1e-10, rtol=0)
    torch.testing.assert_close(space.project(codes), torch.zeros_like(codes), atol=1e-10, rtol=0)


@pytest.fixture(scope="module")
def trained_sae():
    """A concept autoencoder (8 -> 8 concepts) trained on rank-3 non-negative rows, and those rows."""
    x = low_rank_rows(512, 8, 3, seed=0)
    cfg = ConceptAutoencoderConfig(d_sae=8, epochs=20, batch_size=64, lr=1e-2, l1_coefficient=0.001, log_every=1000)
    torch.manual_seed(0)
    sae = build_sae(cfg, 8)
    stats = train_sae(sae, x, cfg, accelerator=Accelerator(cpu=True), seed=0, show_progress=False)
    assert stats["final_fit"]["explained_variance"] > 0.9
    return sae.eval(), x


def _round_trip_drift(sae, x, alpha_scale: float) -> tuple[float, float]:
    """(mean over rows of ‖P(E(D(z + F α)) − z)‖, the same for α = 0): how far decoding and re-encoding moves a
    used code's projection on the used span, with the injection and without (the SAE's own error). α has
    `alpha_scale` times the used codes' mean norm on each of the 4 free directions."""
    with torch.no_grad():
        z = sae.encode(x).double()
        space = free_directions(z, 4)
        used = torch.linalg.svd(z.T, full_matrices=True)[0][:, :z.shape[1] - 4]
        project = used @ used.T
        alpha = torch.full((4,), alpha_scale * float(z.norm(dim=1).mean()), dtype=torch.float64)
        injected = z + space.directions_CK @ alpha

        def drift(codes):
            return float(((sae.encode(sae.decode(codes.float())).double() - z) @ project).norm(dim=1).mean())

        return drift(injected), drift(z)


def test_through_a_trained_sae_a_small_free_injection_moves_used_codes_no_more_than_the_sae_error(trained_sae):
    """Decode z + F α, re-encode: the used-span projection stays as close to z's as re-encoding z itself does
    (the SAE's own error is the bound), for a small α (‖F α‖ = 2·10⁻⁴ of a code's norm)."""
    sae, x = trained_sae
    injected, own = _round_trip_drift(sae, x, 1e-4)
    assert own > 0  # the SAE is not exact: the bound is its error, not 0
    assert injected <= 1.05 * own


def test_through_a_trained_sae_a_code_sized_free_injection_drifts_beyond_the_sae_error(trained_sae):
    """LIMITATION of "free directions do not interfere" once the code goes through the nonlinear decoder: the
    free directions of a trained concept autoencoder are its never-firing latents, whose decoder weights keep
    their random initialisation, so decoding z + F α (‖F α‖ = twice a code's mean norm) changes the features,
    and re-encoding them moves the used concepts well beyond the SAE's own reconstruction error (by 3-100x over
    seeds and sparsity settings). Non-interference holds exactly in code space only (test above)."""
    sae, x = trained_sae
    with torch.no_grad():
        assert int((sae.encode(x) == 0).all(0).sum()) >= 4  # at least 4 latents never fire: the free space
    injected, own = _round_trip_drift(sae, x, 1.0)
    assert injected > 2 * own


# --- 3. linear CKA ------------------------------------------------------------------------------------------------
def test_cka_of_a_representation_with_itself_and_with_a_rotated_scaled_copy_is_one():
    x = gaussian(30, 5, seed=20)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3 * x @ random_orthogonal(5, seed=21)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 7.0) == pytest.approx(1.0, abs=1e-12)  # columns are centred
    assert linear_cka(x.float(), x.float()) == pytest.approx(1.0, abs=1e-6)


def test_cka_one_dimensional_is_the_squared_correlation_by_hand():
    """x = (1, 2, 3, 4), y = (1, 3, 2, 4): centred (−1.5, −.5, .5, 1.5) and (−1.5, .5, −.5, 1.5), dot 4, squared
    norms 5 and 5: CKA = 4² / (5 · 5) = 0.64."""
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    assert linear_cka(x, y) == pytest.approx(0.64, abs=1e-12)
    assert linear_cka(x, torch.tensor([[1.0], [0.0], [0.0], [1.0]])) == pytest.approx(0.0, abs=1e-12)  # orthogonal


def test_cka_matches_the_kernel_formula_by_numpy_with_different_widths():
    """The HSIC form on N x N Gram matrices (not the feature-space products the code uses):
    CKA = tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K = X Xᵀ, L = Y Yᵀ, H = I − 11ᵀ/N."""
    x, y = gaussian(9, 3, seed=22).numpy(), gaussian(9, 5, seed=23).numpy()
    y[:, :2] += 2 * x[:, :2]  # related, not identical
    h = np.eye(9) - np.ones((9, 9)) / 9
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    expected = hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))
    value = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert value == pytest.approx(expected, rel=1e-12)
    assert 0.1 < value < 0.99
    assert linear_cka(torch.from_numpy(y), torch.from_numpy(x)) == pytest.approx(value, rel=1e-12)  # symmetric


def test_cka_is_not_invariant_to_a_general_linear_map():
    x = gaussian(40, 3, seed=24)
    stretch = torch.diag(torch.tensor([1.0, 1.0, 20.0], dtype=torch.float64))
    assert linear_cka(x, x @ stretch) < 0.9


def test_cka_is_nan_for_a_constant_representation_and_refuses_other_row_counts():
    x = gaussian(6, 3, seed=25).float()
    assert math.isnan(linear_cka(torch.full((6, 2), 0.1), x))
    assert math.isnan(linear_cka(x, torch.zeros(6, 4)))
    with pytest.raises(ValueError, match="5 and 6 rows"):
        linear_cka(x[:5], x)


def test_cka_is_nan_for_constant_float64_representations():
    x = torch.full((7, 4), 0.1, dtype=torch.float64)
    y = torch.full((7, 3), 0.7, dtype=torch.float64)
    assert math.isnan(linear_cka(x, y))


# --- 4. the learned aligner ---------------------------------------------------------------------------------------
def test_feature_aligner_shapes_and_final_relu():
    torch.manual_seed(0)
    aligner = FeatureAligner(6, 4, hidden=8)
    h = gaussian(50, 6, seed=30).float() * 5
    out = aligner(h)
    assert out.shape == (50, 4) and bool((out >= 0).all()) and bool((out == 0).any())
    aligner.final_relu = False
    raw = aligner(h)
    assert bool((raw < 0).any())
    torch.testing.assert_close(out, torch.relu(raw))
    assert aligner.net[0].out_features == 8 and aligner.net[2].in_features == 8


def test_fit_aligner_learns_a_relu_linear_map_between_feature_spaces():
    """h_A = ReLU(h_B M) for a known M (6 x 4): after training Φ, ‖h_A − Φ(h_B)‖_F / ‖h_A‖_F < 0.1, far below
    the untrained Φ's (steps = 0 measures it without training). (The initialisation seed matters: see the test
    below; with seeds 0 and 3 of torch.manual_seed an output starts dead and the fit stalls at 0.47 and 0.77.)"""
    g = torch.Generator().manual_seed(31)
    h_b = torch.rand(256, 6, generator=g)
    m = torch.rand(6, 4, generator=g) - 0.3
    h_a = torch.relu(h_b @ m)
    torch.manual_seed(1)
    aligner = FeatureAligner(6, 4, hidden=32)
    untouched = copy.deepcopy(aligner.state_dict())

    def fit(steps):
        return fit_aligner(aligner, h_b, h_a, into=lambda t: t, steps=steps, lr=1e-2, batch_size=64,
                           generator=torch.Generator().manual_seed(0))

    before = fit(0)
    assert all(torch.equal(v, aligner.state_dict()[k]) for k, v in untouched.items())  # 0 steps: not trained
    assert before > 0.5
    after = fit(600)
    assert after < 0.1 and after < before / 5
    with torch.no_grad():
        by_hand = float(torch.linalg.norm(aligner(h_b) - h_a) / torch.linalg.norm(h_a))
    assert after == pytest.approx(by_hand, rel=1e-6)
    assert not aligner.training  # left in eval mode


def test_an_aligner_output_dead_at_initialisation_never_trains():
    """LIMITATION of the final ReLU: an output of Φ whose pre-activation is negative on every row gets no
    gradient, so it stays 0 for good, however wrong (here forced by a bias of −100; with PyTorch's default
    initialisation it happens by chance, for 2 of torch seeds 0-5 on the toy above)."""
    g = torch.Generator().manual_seed(31)
    h_b = torch.rand(256, 6, generator=g)
    h_a = torch.relu(h_b @ (torch.rand(6, 4, generator=g) - 0.3))
    torch.manual_seed(1)
    aligner = FeatureAligner(6, 4, hidden=32)
    with torch.no_grad():
        aligner.net[2].bias[0] = -100.0
    dead_row = aligner.net[2].weight[0].clone()
    fit_aligner(aligner, h_b, h_a, lambda t: t, 200, 1e-2, 64, torch.Generator().manual_seed(0))
    assert torch.equal(aligner.net[2].weight[0], dead_row) and float(aligner.net[2].bias[0].detach()) == -100.0
    with torch.no_grad():
        assert bool((aligner(h_b)[:, 0] == 0).all()) and float(h_a[:, 0].min()) > 0


def test_fit_aligner_through_a_frozen_map_trains_only_the_aligner():
    """`into` (A's frozen SAE encoder in the methods) is applied after Φ; its parameters do not change."""
    sae = tiny_sae(d_in=4, c=3)
    for param in sae.parameters():
        param.requires_grad_(False)
    frozen = copy.deepcopy(sae.state_dict())
    g = torch.Generator().manual_seed(32)
    h_b = torch.rand(64, 5, generator=g)
    target = sae.encode(torch.rand(64, 4, generator=g))
    torch.manual_seed(1)
    aligner = FeatureAligner(5, 4, hidden=16)
    before = fit_aligner(aligner, h_b, target, sae.encode, 0, 1e-2, 32, torch.Generator().manual_seed(0))
    after = fit_aligner(aligner, h_b, target, sae.encode, 200, 1e-2, 32, torch.Generator().manual_seed(0))
    assert after < before
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in frozen.items())


# --- 5. editor parts, by hand -------------------------------------------------------------------------------------
def test_constant_gate_is_one_per_row():
    z = torch.randn(5, 3)
    assert torch.equal(ConstantGate()(z), torch.ones(5))


def test_spatial_gate_is_the_max_over_anchors_of_exp_minus_distance_over_sigma():
    """Anchors (0, 0) and (3, 4), σ = 5: z = (0, 0) sits on an anchor (1); (3, 0) is 3 and 4 away
    (e^{−3/5}); (6, 8) is 10 and 5 away (e^{−1})."""
    gate = SpatialGate(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), sigma=5.0)
    p = gate(torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]]))
    torch.testing.assert_close(p, torch.tensor([1.0, math.exp(-3 / 5), math.exp(-1)]))
    assert "anchors" in dict(gate.named_buffers()) and not list(gate.parameters())


def test_learned_gate_is_a_probability_and_starts_at_its_bias():
    torch.manual_seed(0)
    gate = LearnedGate(3, hidden=16, bias=-2.0)
    assert gate.net[0].out_features == 16 and float(gate.net[2].bias.detach()) == -2.0
    p = gate(100 * torch.randn(200, 3))
    assert p.shape == (200,) and bool(((p >= 0) & (p <= 1)).all())
    with torch.no_grad():
        gate.net[2].weight.zero_()
    torch.testing.assert_close(gate(torch.randn(4, 3)), torch.full((4,), 1 / (1 + math.e ** 2)))


def test_mixed_gate_weights_spatial_and_learned():
    spatial = SpatialGate(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), sigma=5.0)
    learned = LearnedGate(2)
    with torch.no_grad():
        learned.net[2].weight.zero_()
        learned.net[2].bias.fill_(math.log(3))  # σ(log 3) = 0.75
    p = MixedGate(spatial, learned, beta=0.4)(torch.tensor([[0.0, 0.0], [6.0, 8.0]]))
    torch.testing.assert_close(p, torch.tensor([0.4 * 1 + 0.6 * 0.75, 0.4 * math.exp(-1) + 0.6 * 0.75]))


def test_constant_injection_adds_strength_times_vector_to_every_row():
    injection = ConstantInjection(torch.tensor([1.0, -2.0, 0.5]), strength=2.0)
    out = injection(torch.zeros(4, 3))
    torch.testing.assert_close(out, torch.tensor([[2.0, -4.0, 1.0]] * 4))
    assert not list(injection.parameters())  # the strength is a buffer unless learned
    assert [n for n, _ in ConstantInjection(torch.ones(3), learn_strength=True).named_parameters()] == ["strength"]


def test_selected_injection_touches_only_the_chosen_concepts():
    injection = SelectedInjection(5, torch.tensor([1, 3]), strength=2.0, weight_init=0.1)
    torch.testing.assert_close(injection(torch.randn(2, 5)), torch.tensor([[0.0, 0.2, 0.0, 0.2, 0.0]] * 2))
    with torch.no_grad():
        injection.weights.copy_(torch.tensor([9.0, 1.0, 9.0, -3.0, 9.0]))
    torch.testing.assert_close(injection(torch.zeros(1, 5)), torch.tensor([[0.0, 2.0, 0.0, -6.0, 0.0]]))
    assert [n for n, _ in injection.named_parameters()] == ["weights"]


def test_free_space_injection_is_gamma_f_f_transpose_v():
    f = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.6], [0.0, 0.8]])  # orthonormal columns in 4 dims
    v = torch.tensor([2.0, 5.0, 1.0, 1.0])
    injection = FreeSpaceInjection(v, f, strength=3.0)
    # F Fᵀ v = (2, 0, 0.6·1.4, 0.8·1.4): the component along (0, 0, 0.6, 0.8) is 0.6 + 0.8 = 1.4
    expected = 3.0 * torch.tensor([2.0, 0.0, 0.84, 1.12])
    torch.testing.assert_close(injection(torch.zeros(2, 4)), torch.stack([expected, expected]))
    assert [n for n, _ in injection.named_parameters()] == ["strength"]


def test_spatial_injection_by_hand():
    """γ [a (t + δ − z) + b F Fᵀ (t + δ − z)] with t = (1, 2, 3), δ = (0, 0, 1), F = e₃, a = 0.7, b = 0.3, γ = 2:
    for z = (1, 1, 1), t + δ − z = (0, 1, 3) and F Fᵀ of it (0, 0, 3): 2 [(0, .7, 2.1) + (0, 0, .9)]."""
    f = torch.tensor([[0.0], [0.0], [1.0]])
    injection = SpatialInjection(torch.tensor([1.0, 2.0, 3.0]), f, direct=0.7, free=0.3, strength=2.0)
    with torch.no_grad():
        injection.offset.copy_(torch.tensor([0.0, 0.0, 1.0]))
    out = injection(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.4, 6.0], [0.0, 0.0, 0.0]]))
    assert {n for n, p in injection.named_parameters() if p.requires_grad} == {"strength", "offset"}
    fixed = SpatialInjection(torch.zeros(3), f, 0.7, 0.3, learn_position=False)
    assert {n for n, p in fixed.named_parameters() if p.requires_grad} == {"strength"}


def test_blends_by_hand():
    h = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    h_e = torch.tensor([[5.0, 6.0], [5.0, 6.0], [5.0, 6.0]])
    p = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(NoBlend()(h, h_e, p), h_e)
    # LearnedBlend, w = log 3: ρ = 0.75, h' = 0.75 h + 0.25 hₑ
    torch.testing.assert_close(LearnedBlend(math.log(3))(h, h_e, p), 0.75 * h + 0.25 * h_e)
    # GatedBlend, w = 0: r = clamp(0.5 + 1 − p, 0, 1) = (1, 1, 0.5)
    r = torch.tensor([[1.0], [1.0], [0.5]])
    torch.testing.assert_close(GatedBlend(0.0)(h, h_e, p), r * h + (1 - r) * h_e)
    # GatedBlend, w very negative: r = clamp(σ(w) + 1 − p) ≈ 1 − p (the clamp only cuts above 1)
    r = (torch.sigmoid(torch.tensor(-30.0)) + 1 - p).clamp(0, 1)[:, None]
    torch.testing.assert_close(GatedBlend(-30.0)(h, h_e, p), r * h + (1 - r) * h_e)
    # AdaptiveBlend, w = log 3: b = p · 0.75 = (0, 0.375, 0.75), h' = (1 − b) h + b hₑ
    b = torch.tensor([[0.0], [0.375], [0.75]])
    torch.testing.assert_close(AdaptiveBlend(math.log(3))(h, h_e, p), (1 - b) * h + b * h_e)


def test_gated_blend_ratio_is_clamped_to_one():
    """σ(w) + 1 − p exceeds 1 whenever p < σ(w): clamped, h' is then exactly h, never an extrapolation."""
    h, h_e = torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0, 6.0]])
    assert torch.equal(GatedBlend(3.0)(h, h_e, torch.tensor([0.2])), h)


def test_concept_editor_is_the_composed_formula():
    """h' = blend(h, D(z + p · injection(z)), p), z = E(h), p = gate(z), with a real (random) concept autoencoder."""
    sae = tiny_sae(d_in=D, c=4)
    torch.manual_seed(1)
    gate = LearnedGate(4)
    injection = ConstantInjection(torch.tensor([1.0, 0.0, -0.5, 2.0]), strength=1.5)
    blend = AdaptiveBlend(0.3)
    editor = ConceptEditor(sae, gate, injection, blend)
    assert not any(p.requires_grad for p in sae.parameters())
    h = torch.rand(7, D)
    with torch.no_grad():
        out = editor(h)
        z = sae.encode(h)
        p = gate(z)
        h_e = sae.decode(z + p[:, None] * 1.5 * torch.tensor([1.0, 0.0, -0.5, 2.0]))
        b = (p * torch.sigmoid(torch.tensor(0.3)))[:, None]
        expected = (1 - b) * h + b * h_e
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(editor.last_gate, p)
    assert not torch.allclose(out, h, atol=1e-3)  # it did edit


def test_editor_with_identity_sae_adds_the_injection_to_the_features():
    editor = ConceptEditor(identity_sae(), ConstantGate(), ConstantInjection(torch.eye(D)[5], strength=0.5),
                           NoBlend())
    h = torch.rand(3, D)
    torch.testing.assert_close(editor(h), h + 0.5 * torch.eye(D)[5])


def _editor_parameter_count(c: int, d: int, hidden: int) -> int:
    """Scalars (parameters and buffers) of an editor with a concept autoencoder (d -> 2c -> c -> 2c -> d), a
    LearnedGate(c, hidden), a SelectedInjection(c) and a GatedBlend, counted by hand."""
    sae = (d * 2 * c + 2 * c) + (2 * c * c + c) + (c * 2 * c + 2 * c) + (2 * c * d + d) + 2 * d  # + norm buffers
    gate = (c * hidden + hidden) + (hidden + 1)
    injection = 1 + c + c  # strength (buffer), mask (buffer), weights
    return sae + gate + injection + 1  # blend weight


def test_attach_keeps_a_keys_adds_editor_keys_and_parameters_changed_counts_them():
    a = model_a()
    edited = copy.deepcopy(a)
    c = 4
    editor = ConceptEditor(tiny_sae(d_in=D, c=c), LearnedGate(c, hidden=5), SelectedInjection(c, torch.tensor([0])),
                           GatedBlend(0.0))
    assert attach(edited, editor) is edited and editor_of(edited) is editor
    keys_a, keys_e = set(a.state_dict()), set(edited.state_dict())
    assert keys_a < keys_e
    assert all(k.startswith("blocks.0.3.") for k in keys_e - keys_a)  # after Linear, ReLU, Dropout
    assert all(torch.equal(edited.state_dict()[k], v) for k, v in a.state_dict().items())
    assert parameters_changed(a, edited) == (0, _editor_parameter_count(c, D, 5))
    with torch.no_grad():
        edited.head.weight[TARGET, 0] += 1.0
    assert parameters_changed(a, edited) == (1, _editor_parameter_count(c, D, 5))
    x = torch.rand(5, D)
    with torch.no_grad():
        torch.testing.assert_close(edited(x), edited.head(editor(penultimate(a, x))))


# --- 6. editor training -------------------------------------------------------------------------------------------
def _gated_editor(c: int = D) -> ConceptEditor:
    """A learned detector, a learned weight on concept 5 (the feature A's target row reads, starting at 0), an
    adaptive blend: the edit starts as the identity (h' = h)."""
    torch.manual_seed(3)
    return ConceptEditor(identity_sae(c), LearnedGate(c), SelectedInjection(c, torch.tensor([5]), 1.0, 0.0),
                         AdaptiveBlend(0.0))


def _edited(ctx) -> MLPClassifier:
    return attach(ctx.copy_of_a(), _gated_editor())


def _target_x(data: TransferData) -> torch.Tensor:
    train = data.splits.train
    return train.x[train.y == TARGET]


def _margin(model, x) -> float:
    with torch.no_grad():
        logits = model.eval()(x)
    return float((logits.max(1).values - logits[:, TARGET]).mean())


TRAINING = dict(target_images=8, steps=40, lr=0.05, target_batch=4, replay_batch=8, replay_per_class=5)


def test_train_editor_changes_only_the_editor_and_never_a_or_the_sae_inside():
    data = toy_data()
    ctx = context(data)
    edited = _edited(ctx)
    a_state = copy.deepcopy(ctx.model_a.state_dict())
    editor = editor_of(edited)
    sae_state = copy.deepcopy(editor.sae.state_dict())
    trainable = {k: v.clone() for k, v in editor.named_parameters() if v.requires_grad}
    assert set(trainable) == {"gate.net.0.weight", "gate.net.0.bias", "gate.net.2.weight", "gate.net.2.bias",
                              "injection.weights", "blend.weight"}
    train_editor(ctx, edited, EditorTraining(**TRAINING))
    state = edited.state_dict()
    assert all(torch.equal(state[k], v) for k, v in a_state.items())  # A's own weights in the copy: bit-identical
    assert all(torch.equal(v, ctx.model_a.state_dict()[k]) for k, v in a_state.items())  # A itself too
    assert all(torch.equal(editor.sae.state_dict()[k], v) for k, v in sae_state.items())
    assert parameters_changed(ctx.model_a, edited)[0] == 0
    moved = [k for k, v in trainable.items() if not torch.equal(dict(editor.named_parameters())[k], v)]
    assert "injection.weights" in moved and "blend.weight" in moved and "gate.net.2.bias" in moved
    assert set(ctx.diagnostics) == {"loss_preservation", "loss_transfer", "loss_confidence"}


def test_train_editor_teaches_the_target_where_the_injection_can():
    """A's target row reads feature 5; the editor can raise concept 5 (= feature 5 through the identity SAE) on
    inputs its detector takes for the target: after training the target logit's margin on the target images is
    far smaller, and their cross-entropy against the target lower."""
    data = toy_data()
    ctx = context(data)
    edited = _edited(ctx)
    x = _target_x(data)
    labels = torch.full((len(x),), TARGET)
    before = _margin(edited, x)
    assert before == pytest.approx(_margin(ctx.model_a, x), abs=1e-6) and before > 0.2  # starts as A
    with torch.no_grad():
        ce_before = float(F.cross_entropy(edited(x), labels))
    train_editor(ctx, edited, EditorTraining(**TRAINING))
    with torch.no_grad():
        ce_after = float(F.cross_entropy(edited(x), labels))
    assert _margin(edited, x) < 0.5 * before
    assert ce_after < ce_before
    assert float(editor_of(edited).injection.weights[5]) > 0  # concept 5 raised, not lowered


@pytest.mark.parametrize("replay_per_class, other", [(5, 4 * 5), (None, 4 * PER_CLASS), (2, 4 * 2)])
def test_train_editor_budget_is_exact(replay_per_class, other):
    ctx = context(toy_data())
    train_editor(ctx, _edited(ctx), EditorTraining(**{**TRAINING, "steps": 7, "replay_per_class": replay_per_class}))
    assert ctx.budget.as_dict() == {"target_images": 8, "target_labels": True, "other_images": other,
                                    "validation_images": 0, "gradient_steps": 7, "parameters_changed": 0,
                                    "parameters_added": 0}  # the stage fills the last two
    assert len(ctx.target_indices) == 8


def test_train_editor_with_zero_steps_uses_nothing_and_changes_nothing():
    ctx = context(toy_data())
    edited = _edited(ctx)
    before = copy.deepcopy(edited.state_dict())
    train_editor(ctx, edited, EditorTraining(**{**TRAINING, "steps": 0}))
    assert all(torch.equal(v, edited.state_dict()[k]) for k, v in before.items())
    assert ctx.budget.as_dict()["target_images"] == 0 and ctx.budget.other_images == 0
    assert ctx.budget.gradient_steps == 0 and not ctx.budget.target_labels and ctx.diagnostics == {}


def test_train_editor_with_nothing_to_train_uses_nothing():
    ctx = context(toy_data())
    edited = attach(ctx.copy_of_a(), ConceptEditor(identity_sae(), ConstantGate(),
                                                   ConstantInjection(torch.eye(D)[5]), NoBlend()))
    train_editor(ctx, edited, EditorTraining(**TRAINING))
    assert ctx.budget.gradient_steps == 0 and ctx.budget.target_images == 0 and ctx.budget.other_images == 0


def test_train_editor_is_reproducible_for_a_seed():
    states = []
    for seed in (4, 4, 5):
        ctx = context(toy_data(), seed=seed)
        edited = _edited(ctx)
        train_editor(ctx, edited, EditorTraining(**{**TRAINING, "steps": 5}))
        states.append(editor_of(edited).state_dict())
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())
    assert not all(torch.equal(v, states[2][k]) for k, v in states[0].items())


def _divergence_message(ctx, edited, **settings) -> str:
    with pytest.raises(DivergenceError) as info:
        train_editor(ctx, edited, EditorTraining(**{**TRAINING, **settings}))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_huge_lr_is_a_one_line_divergence_error_naming_the_lr():
    ctx = context(toy_data(), name="my_editor")
    message = _divergence_message(ctx, _edited(ctx), lr=1e30, steps=5)
    assert message.startswith("transfer.my_editor.lr=1e+30: ") and "diverged at step 2" in message


def test_a_poisoned_parameter_is_a_divergence_error_at_the_first_step():
    ctx = context(toy_data(), name="poisoned")
    edited = _edited(ctx)
    with torch.no_grad():
        editor_of(edited).blend.weight.fill_(float("nan"))
    message = _divergence_message(ctx, edited)
    assert message.startswith("transfer.poisoned.lr=0.05: ") and "step 1 (loss nan)" in message


def test_an_lr_at_the_float32_limit_is_also_a_divergence_error():
    ctx = context(toy_data(), name="limit")
    _divergence_message(ctx, _edited(ctx), lr=1e38, steps=3)


# --- the SAEs' images and the codes the methods read --------------------------------------------------------------
def test_sae_images_a_gets_its_classes_b_its_others_and_the_same_k_target_images():
    data = toy_data(target_images=3)
    concept = data.concept
    assert sae_images(concept, "a").as_dict() == {"classes": [0, 1, 2, 3], "per_class": None, "target_images": 0}
    assert sae_images(concept, "b").as_dict() == {"classes": [2, 3, 5], "per_class": None, "target_images": 3}
    train_y = data.splits.train.y
    a_rows = sae_images(concept, "a").indices(data, sample_seed=9)
    assert torch.equal(a_rows, torch.nonzero(torch.isin(train_y, torch.tensor([0, 1, 2, 3]))).flatten())
    b_rows = sae_images(concept, "b").indices(data, sample_seed=9)
    assert torch.equal(b_rows, b_rows.sort().values) and len(b_rows) == 3 * PER_CLASS + 3
    ctx = context(data, sample_seed=9)
    ctx.target_images(3)
    assert sorted(int(i) for i in b_rows if train_y[i] == TARGET) == ctx.target_indices  # the methods' same k


def test_sae_images_per_class_takes_the_first_of_the_fixed_order():
    data = toy_data(sae_images_per_class=2)
    rows = SAEImages([1, 5], 2, target_images=1).indices(data, sample_seed=3)
    expected = torch.cat([class_order(data, 1, 3)[:2], class_order(data, 5, 3)[:2], class_order(data, TARGET, 3)[:1]])
    assert torch.equal(rows, expected.sort().values)


def test_encode_is_the_sae_codes_of_the_penultimate_features():
    model = model_a()
    sae = tiny_sae(d_in=D, c=4)
    x = torch.rand(9, D)
    codes = encode(model, sae, x, batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(codes, sae.encode(torch.relu(x)))  # A's hidden layer is the identity + ReLU
    assert encode(model, sae, x[:0]).shape == (0, 4)


# --- the shared base of the SAE methods ---------------------------------------------------------------------------
def test_free_dims_default_is_min_8_and_a_third_of_c_at_least_1():
    assert [free_dims(None, c) for c in (1, 2, 3, 12, 24, 30, 90)] == [1, 1, 1, 4, 8, 8, 8]
    assert free_dims(5, 24) == 5


def _fake_views(anchor_a: torch.Tensor, anchor_b: torch.Tensor, labels: torch.Tensor):
    return SimpleNamespace(anchor_a=anchor_a, anchor_b=anchor_b, anchors=Split(torch.zeros(len(labels), 1), labels),
                           used_a=anchor_a)


def _fake_ctx():
    ctx = SimpleNamespace(concept=ConceptConfig(), diagnostics={})
    ctx.report = lambda key, value: ctx.diagnostics.__setitem__(key, float(value))
    return ctx


def test_align_on_images_recovers_the_rotation_and_carry_applies_it_or_its_inverse():
    """B's codes = A's codes Qᵀ on the shared classes' images: align_on=images fits R = Q exactly (both residuals
    0); carry maps a B code v to v R (carry=rotation) or v Rᵀ (carry=reference, the inverse)."""
    labels = torch.tensor([2, 3] * 10)
    anchor_a = gaussian(20, 5, seed=40).float()
    q = random_orthogonal(5, seed=41)
    anchor_b = (anchor_a.double() @ q.T).float()
    ctx = _fake_ctx()
    method = ConceptSpaceMethod("m", AlignedConceptConfig(align_on="images"))
    alignment = method.align(ctx, _fake_views(anchor_a, anchor_b, labels))
    torch.testing.assert_close(alignment.rotation, q, atol=1e-5, rtol=0)
    assert ctx.diagnostics["procrustes_residual"] < 1e-6 and ctx.diagnostics["procrustes_residual_images"] < 1e-6
    v = anchor_b[:3]
    torch.testing.assert_close(method.carry(alignment, v), anchor_a[:3], atol=1e-5, rtol=0)
    reference = ConceptSpaceMethod("m", AlignedConceptConfig(carry="reference"))
    torch.testing.assert_close(reference.carry(alignment, v), (v.double() @ alignment.rotation.T).float())
    assert not torch.allclose(reference.carry(alignment, v), anchor_a[:3], atol=0.1)


def test_align_on_two_centroids_reports_zero_residual_yet_misses_the_images():
    """The deep dive's default (align_on=centroids) with 2 shared classes: the fitted residual is 0 although the
    images' codes, which a rotation maps exactly, are not mapped (`procrustes_residual_images` shows it)."""
    labels = torch.tensor([2, 3] * 10)
    anchor_a = gaussian(20, 5, seed=42).float()
    anchor_b = (anchor_a.double() @ random_orthogonal(5, seed=43).T).float()
    ctx = _fake_ctx()
    ConceptSpaceMethod("m", AlignedConceptConfig()).align(ctx, _fake_views(anchor_a, anchor_b, labels))
    assert ctx.diagnostics["procrustes_residual"] < 1e-6
    assert ctx.diagnostics["procrustes_residual_images"] > 0.1


def test_free_space_of_a_method_reports_its_dimensions_and_energy():
    codes, _ = _codes_in_subspace()
    ctx = _fake_ctx()
    space = ConceptSpaceMethod.free_space(ctx, _fake_views(codes, codes, torch.zeros(len(codes))), 4)
    assert space.directions_CK.shape == (7, 4)
    assert ctx.diagnostics["free_dims"] == 4 and ctx.diagnostics["free_space_energy"] < 1e-25


@pytest.mark.parametrize("sae_per_class, anchors_per_class, other",
                         [(None, None, 5 * PER_CLASS),  # every image of 0-3 (A's SAE) and 2, 3, 5 (B's)
                          (2, 3, 4 * 3 + 2)])  # first 3 of 0-3 (anchors, A's own) ⊇ first 2 (SAEs); first 2 of 5
def test_views_count_the_saes_images_and_steps_and_what_the_method_reads(sae_per_class, anchors_per_class, other):
    data = toy_data(target_images=3, sae_images_per_class=sae_per_class)
    concept = data.concept
    saes = ConceptSAEs(tiny_sae(c=4, seed=0), tiny_sae(c=4, seed=1),
                       images={w: sae_images(concept, w) for w in "ab"}, steps={"a": 7, "b": 5})
    settings = AlignedConceptConfig(target_images=3, anchors_per_class=anchors_per_class)
    ctx = context(data, settings=settings, saes=saes)
    views = ConceptSpaceMethod("m", settings).views(ctx)
    assert ctx.budget.target_images == 3 and ctx.budget.target_labels
    assert ctx.budget.other_images == other and ctx.budget.gradient_steps == 12
    assert ctx.diagnostics["steps_sae"] == 12
    assert {"cka_features", "cka_concepts"} <= set(ctx.diagnostics)
    assert views.target_b.shape == (3, 4) and views.anchor_a.shape == views.anchor_b.shape
    assert set(views.anchors.y.tolist()) == {2, 3} and set(views.used.y.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(views.anchor_a, encode(ctx.model_a, saes.sae_a, views.anchors.x))
