"""JumpReLU's and BatchTopK's hand-written training steps equal autograd on the plain loss: same losses, codes
and gradients (the straight-through threshold gradients included), in the edge cases too."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae import batchtopk as batchtopk_module
from sae_ception.sae import fast_grads
from sae_ception.sae.base import SparseAutoencoder, TrainingState
from sae_ception.sae.batchtopk import BatchTopKSAEConfig, keep_batch_top_k
from sae_ception.sae.jumprelu import JumpReLUSAEConfig

from tests.sae.test_fast_grads import fast, perturbed, reference


@pytest.fixture(autouse=True)
def hand_written_batchtopk_at_any_size(monkeypatch):
    """These tests' batches are small: BatchTopK would train them with autograd (MIN_HAND_WRITTEN_VALUES)."""
    monkeypatch.setattr(batchtopk_module, "MIN_HAND_WRITTEN_VALUES", 0)


def no_dead(width: int, step: int = 0) -> TrainingState:
    return TrainingState(step=step, dead_F=torch.zeros(width, dtype=torch.bool), any_dead=False)


def assert_same_step(out, ref, grads, ref_grads, x=None):
    for key in ref.losses:
        torch.testing.assert_close(out.losses[key], ref.losses[key].detach(), msg=key)
    torch.testing.assert_close(out.codes_BF, ref.codes_BF.detach())
    torch.testing.assert_close(out.recon, ref.recon.detach())
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    assert torch.equal(out.fired_F, (ref.codes_BF != 0).any(0))
    torch.testing.assert_close(out.l0, (ref.codes_BF != 0).to(out.l0.dtype).sum(-1).mean())


# --- JumpReLU -------------------------------------------------------------------------------------------
def jumprelu(normalize="standardize", seed=0, bandwidth=0.6) -> SparseAutoencoder:
    """Thresholds of every kind: negative parameters (clamped to 0: no gradient), exactly 0, and positive ones
    of the pre-activations' own scale, with a kernel window wide enough to hold many pre-activations."""
    cfg = JumpReLUSAEConfig(d_sae=16, normalize=normalize, l0_coefficient=0.05, l0_warmup_steps=10,
                            bandwidth=bandwidth, initial_threshold=0.3)
    sae = perturbed(cfg, seed=seed)
    with torch.no_grad():
        sae.threshold_param_F.copy_(torch.linspace(-0.2, 1.0, 16, dtype=torch.float64))
        sae.threshold_param_F[5] = 0.0
    return sae


@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
@pytest.mark.parametrize("step", [0, 5, 20])  # no L0 term yet, half of it, all of it
def test_jumprelu_step_matches_autograd(normalize, step):
    sae = jumprelu(normalize)
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    ref, ref_grads = reference(sae, x, no_dead(16, step))
    out, grads = fast(sae, x, no_dead(16, step))
    assert_same_step(out, ref, grads, ref_grads)
    assert (ref.codes_BF != 0).any() and (ref.codes_BF == 0).any()  # both sides of the jump are exercised
    pre = sae.pre_activation(sae.normalize(x)).detach()
    in_window = ((pre - sae.threshold_F).abs() < sae.cfg.bandwidth / 2).any(0)
    assert in_window[sae.threshold_param_F > 0].any() and (~in_window).any()
    assert (ref_grads["threshold_param_F"][sae.threshold_param_F < 0] == 0).all()  # clamp_min pins these
    assert ref_grads["threshold_param_F"][sae.threshold_param_F > 0].abs().max() > 1e-3
    if normalize == "none":
        torch.testing.assert_close(out.squared_error, (ref.recon - x).pow(2).sum().detach())
    else:
        assert out.squared_error is None


def test_jumprelu_threshold_gradient_by_hand():
    """dL/dθ_f = −(1/ε) Σ_b [|pre_bf − θ_f| < ε/2] (θ_f dL/dz_bf + λ/B), with dL/dz from autograd."""
    sae = jumprelu()
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    state = no_dead(16, step=20)
    weight, eps = sae.cfg.penalty_weight(state), sae.cfg.bandwidth
    x_norm = sae.normalize(x)
    pre = sae.pre_activation(x_norm).detach()
    codes = (pre * (pre > sae.threshold_F)).requires_grad_(True)
    (sae.decode_normalized(codes) - x_norm).pow(2).mean().backward()
    window = ((pre - sae.threshold_F.detach()).abs() < eps / 2).double()
    by_hand = -(window * (sae.threshold_F.detach() * codes.grad + weight / len(x))).sum(0) / eps
    by_hand[sae.threshold_param_F < 0] = 0
    _, grads = fast(sae, x, state)
    torch.testing.assert_close(grads["threshold_param_F"], by_hand)


@pytest.mark.parametrize("chunk_rows", [8, 7, 1])
def test_jumprelu_step_in_row_blocks_equals_the_whole_batch(chunk_rows):
    """Blocks (7 leaves a ragged last block) accumulate to the same losses, gradients and codes."""
    sae = jumprelu()
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    ref, ref_grads = reference(sae, x, no_dead(16, step=20))
    sae.zero_grad(set_to_none=True)
    weight = sae.cfg.penalty_weight(no_dead(16, step=20))
    out = fast_grads.jumprelu_loss_and_grads(sae, x, weight, chunk_rows=chunk_rows)
    assert_same_step(out, ref, {n: p.grad for n, p in sae.named_parameters()}, ref_grads)


def test_jumprelu_batch_of_one():
    sae = jumprelu()
    x = torch.randn(1, 6, dtype=torch.float64) * 2
    ref, ref_grads = reference(sae, x, no_dead(16, step=20))
    out, grads = fast(sae, x, no_dead(16, step=20))
    assert_same_step(out, ref, grads, ref_grads)


def test_jumprelu_without_a_state_uses_the_whole_coefficient():
    sae = jumprelu()
    x = torch.randn(16, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, None)
    out, grads = fast(sae, x, None)
    assert_same_step(out, ref, grads, ref_grads)
    torch.testing.assert_close(out.losses["total"], out.losses["mse"] + 0.05 * out.losses["l0"])


def test_jumprelu_float32_matches_autograd():
    sae = jumprelu().float()
    x = torch.randn(64, 6) * 2
    ref, ref_grads = reference(sae, x, no_dead(16, step=20))
    out, grads = fast(sae, x, no_dead(16, step=20))
    assert_same_step(out, ref, grads, ref_grads)


# --- BatchTopK ------------------------------------------------------------------------------------------
def batchtopk(normalize="standardize", k=3, seed=0) -> SparseAutoencoder:
    return perturbed(BatchTopKSAEConfig(d_sae=16, k=k, normalize=normalize), seed=seed).train()


@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
def test_batchtopk_step_matches_autograd_while_no_latent_is_dead(normalize):
    sae = batchtopk(normalize)
    x = torch.randn(32, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)
    per_row = (out.codes_BF != 0).sum(-1)
    assert per_row.sum() == 3 * 32 and per_row.min() != per_row.max()  # k·B in all, not k per row
    assert out.losses["aux"] == 0


def test_batchtopk_with_fewer_positive_pre_activations_than_k_times_b():
    """Then every positive pre-activation is kept (ReLU zeroes the rest of the k·B), and codes at 0 get no
    gradient."""
    sae, x = batchtopk(k=8), torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad():  # about a fifth of the pre-activations > 0, where k·B is half of them
        sae.b_enc_F.sub_(sae.pre_activation(sae.normalize(x)).quantile(0.8))
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    positive = sae.pre_activation(sae.normalize(x)) > 0
    assert 0 < positive.sum() < 8 * 32
    assert torch.equal(out.codes_BF != 0, positive)
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_with_no_positive_pre_activation():
    sae = batchtopk()
    with torch.no_grad():
        sae.b_enc_F.sub_(100.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert (out.codes_BF == 0).all() and out.l0 == 0 and not out.fired_F.any()
    assert_same_step(out, ref, grads, ref_grads)


@pytest.mark.parametrize("k", [1, 3, 16])  # 16: k·B is every entry of the batch
def test_batchtopk_batch_of_one_is_topk(k):
    sae = batchtopk(k=k)
    x = torch.randn(1, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_accelerator_selection_matches_autograd(monkeypatch):
    """The fixed-size selection used on accelerators keeps k·B entries whatever their sign: codes at 0 among
    them must get no gradient and not count as firing."""
    monkeypatch.setattr(fast_grads, "batch_top_entries", lambda pre, count: fast_grads.top_entries_by_topk(
        pre.reshape(-1), min(count, pre.numel())))
    sae, x = batchtopk(k=8), torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad():  # about a fifth of the pre-activations > 0, where k·B is half of them
        sae.b_enc_F.sub_(sae.pre_activation(sae.normalize(x)).quantile(0.8))
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert 0 < (out.codes_BF != 0).sum() < 8 * 32
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_float32_matches_autograd():
    sae = batchtopk().float()
    x = torch.randn(64, 6)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)


@pytest.mark.parametrize("dead_count, aux_k", [(8, 3), (8, 10), (16, 4), (1, 3)])  # more or fewer dead than aux_k
@pytest.mark.parametrize("fixed_size", [False, True])  # the CPU's selection (dead columns only), the accelerators'
def test_batchtopk_step_with_dead_latents_matches_autograd_with_auxk(dead_count, aux_k, fixed_size, monkeypatch):
    if fixed_size:
        auxk = fast_grads.auxk_entries
        monkeypatch.setattr(fast_grads, "auxk_entries", lambda *a: auxk(*a, fixed_size=True))
    sae = perturbed(BatchTopKSAEConfig(d_sae=16, k=3, aux_k=aux_k, normalize="standardize")).train()
    x = torch.randn(32, 6, dtype=torch.float64)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[torch.randperm(16, generator=torch.Generator().manual_seed(dead_count))[:dead_count]] = True
    state = TrainingState(step=0, dead_F=dead, any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.losses["aux"] > 0
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_with_the_dead_hint_set_but_no_dead_latent():
    sae = batchtopk()
    x = torch.randn(32, 6, dtype=torch.float64)
    state = TrainingState(step=0, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.losses["aux"] == 0
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_batch_of_one_with_dead_latents():
    sae = perturbed(BatchTopKSAEConfig(d_sae=16, k=3, aux_k=4, normalize="scale")).train()
    x = torch.randn(1, 6, dtype=torch.float64)
    dead = torch.arange(16) % 2 == 0
    state = TrainingState(step=0, dead_F=dead, any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert_same_step(out, ref, grads, ref_grads)


def test_batchtopk_small_batches_take_the_autograd_path(monkeypatch):
    monkeypatch.setattr(batchtopk_module, "MIN_HAND_WRITTEN_VALUES", 32 * 16 + 1)
    monkeypatch.setattr(batchtopk_module, "batchtopk_loss_and_grads", None)  # would fail if called
    sae = batchtopk()
    x = torch.randn(32, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert out.fired_F is None  # what the autograd step leaves to the trainer
    torch.testing.assert_close(out.losses["total"], ref.losses["total"])
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


def test_batchtopk_in_eval_mode_takes_the_autograd_path_with_the_threshold():
    sae = batchtopk().eval()
    with torch.no_grad():
        sae.threshold.fill_(0.2)
    x = torch.randn(32, 6, dtype=torch.float64)
    out, _ = fast(sae, x, no_dead(16))
    pre = sae.pre_activation(sae.normalize(x))
    torch.testing.assert_close(out.codes_BF, pre * (pre > 0.2))


@pytest.mark.parametrize("sae_type", ["jumprelu", "batchtopk"])
def test_non_finite_weights_give_a_non_finite_loss_as_autograd_does(sae_type):
    """A diverging run must show in the loss (the trainer stops on it): NaN pre-activations are kept."""
    sae = jumprelu() if sae_type == "jumprelu" else batchtopk()
    with torch.no_grad():
        sae.W_enc_DF[0, 3] = float("nan")
    x = torch.randn(32, 6, dtype=torch.float64)
    ref, _ = reference(sae, x, no_dead(16))
    out, _ = fast(sae, x, no_dead(16))
    assert ref.losses["total"].isnan() and out.losses["total"].isnan()


# --- BatchTopK's selection on CPU -------------------------------------------------------------------------
def as_set(index: torch.Tensor) -> set[int]:
    return set(index.tolist())


@pytest.mark.parametrize("shape", [(4096, 64), (512, 1000), (3, 5)])  # sampled bound (coprime stride), small
def test_batch_top_entries_equal_topk(shape):
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(shape, generator=gen) + torch.randn(shape[1], generator=gen)  # latents of unequal scale
    count = 4 * shape[0]
    index, codes = fast_grads.batch_top_entries(pre, count)
    assert torch.equal(index, index.sort().values)
    expected = pre.reshape(-1).topk(min(count, pre.numel())).indices
    expected = expected[pre.reshape(-1)[expected] > 0]
    assert as_set(index) == as_set(expected)
    torch.testing.assert_close(codes, pre.reshape(-1)[index])
    torch.testing.assert_close(codes.new_zeros(pre.numel()).scatter_(0, index, codes).view(shape),
                               keep_batch_top_k(pre, 4))


def test_batch_top_entries_when_the_sampled_bound_is_too_high():
    """The strided sample sees only large values, so fewer than `count` lie above its bound: the selection
    falls back to every value and is still exact."""
    pre = torch.randn(2048, 64, generator=torch.Generator().manual_seed(1))
    flat = pre.view(-1)
    stride = 17  # the sample's stride for rows of 64 (16 shares a factor with 64)
    flat[::stride] = 100 + torch.arange(flat[::stride].numel(), dtype=flat.dtype)
    count = 2 * flat[::stride].numel()
    bound = fast_grads._top_lower_bound(flat, count, 64)
    assert bound is not None and (flat > bound).sum() < count
    index, codes = fast_grads.batch_top_entries(pre, count)
    assert as_set(index) == as_set(flat.topk(count).indices)


def test_batch_top_entries_ties_at_the_cut_keep_exactly_count():
    pre = torch.tensor([[3.0, 1.0, 1.0, -1.0], [1.0, 2.0, 0.0, 1.0]])
    index, codes = fast_grads.batch_top_entries(pre, 4)  # 3, 2 and two of the four 1s
    assert index.tolist() == [0, 1, 2, 5] and codes.tolist() == [3.0, 1.0, 1.0, 2.0]
    index, codes = fast_grads.batch_top_entries(pre, 7)  # every positive value (the cut is at 0)
    assert index.tolist() == [0, 1, 2, 4, 5, 7]


# --- whole trainings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sae_type", ["jumprelu", "batchtopk"])
def test_training_with_the_hand_written_step_equals_training_with_autograd(sae_type, accelerator, monkeypatch):
    """Several epochs through the trainer (Adam, clipping, unit decoder rows, the workspace reused across
    steps; BatchTopK's AuxK once latents die after an epoch) end at the same weights as autograd's steps."""
    import importlib

    from sae_ception.sae import train_sae

    from tests.sae.helpers import make_sae, sparse_data

    module = importlib.import_module(f"sae_ception.sae.{sae_type}")
    step_name = f"{sae_type}_loss_and_grads"
    hand_written, calls = getattr(module, step_name), []
    monkeypatch.setattr(module, step_name, lambda *a, **kw: calls.append(1) or hand_written(*a, **kw))
    acts = sparse_data(n=512)
    settings = dict(d_in=16, d_sae=64, epochs=3, batch_size=64, lr=1e-2, log_every=5)
    if sae_type == "jumprelu":
        settings.update(l0_coefficient=1e-2, bandwidth=0.1, l0_warmup_steps=4)
    hand = make_sae(sae_type, **settings)
    train_sae(hand, acts, hand.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert len(calls) == 24  # every step
    monkeypatch.setattr(type(hand), "loss_and_grads", SparseAutoencoder.loss_and_grads)
    auto = make_sae(sae_type, **settings)
    train_sae(auto, acts, auto.cfg, accelerator=accelerator, seed=0, show_progress=False)
    for (name, a), b in zip(hand.state_dict().items(), auto.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
