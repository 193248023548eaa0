"""The hand-written training step equals autograd on the plain loss: same losses, codes and gradients."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae import build_sae
from sae_ception.sae.base import SparseAutoencoder, TrainingState
from sae_ception.sae.relu import ReluSAEConfig
from sae_ception.sae.topk import TopKSAEConfig


def reference(sae: SparseAutoencoder, x_BD: torch.Tensor, state: TrainingState):
    """Autograd on the base class's forward (the plain computation)."""
    sae.zero_grad(set_to_none=True)
    out = SparseAutoencoder.loss_and_grads(sae, x_BD, state)
    return out, {name: p.grad.clone() for name, p in sae.named_parameters()}


def fast(sae: SparseAutoencoder, x_BD: torch.Tensor, state: TrainingState):
    sae.zero_grad(set_to_none=True)
    out = sae.loss_and_grads(x_BD, state)
    return out, {name: p.grad.clone() for name, p in sae.named_parameters()}


def perturbed(cfg, d_in=6, seed=0) -> SparseAutoencoder:
    """An SAE with non-trivial biases and normalisation, in float64 so the comparison is tight."""
    torch.manual_seed(seed)
    sae = build_sae(cfg, d_in=d_in).double()
    x = torch.randn(64, d_in, dtype=torch.float64) * 3 + 1
    sae.set_normalization(x)
    with torch.no_grad():
        sae.b_dec_D.add_(0.3 * torch.randn(d_in, dtype=torch.float64))
        sae.b_enc_F.add_(0.2 * torch.randn(sae.d_sae, dtype=torch.float64))
    return sae


@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
@pytest.mark.parametrize("step", [0, 5])
def test_relu_step_matches_autograd(normalize, step):
    cfg = ReluSAEConfig(d_sae=16, normalize=normalize, l1_coefficient=0.05, l1_warmup_steps=10)
    sae = perturbed(cfg)
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    state = TrainingState(step=step, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=False)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    for key in ("mse", "l1", "total"):
        torch.testing.assert_close(out.losses[key], ref.losses[key])
    torch.testing.assert_close(out.codes_BF, ref.codes_BF)
    torch.testing.assert_close(out.recon, ref.recon)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    assert torch.equal(out.fired_F, (ref.codes_BF != 0).any(0))
    assert (ref.codes_BF != 0).any() and (ref.codes_BF == 0).any()  # both ReLU branches are exercised
    if normalize == "none":  # the trainer's explained variance reuses the step's raw-space squared error
        torch.testing.assert_close(out.squared_error, (ref.recon - x).pow(2).sum())
    else:
        assert out.squared_error is None


@pytest.mark.parametrize("chunk_rows", [8, 7, 1])
@pytest.mark.parametrize("norm_weighted", [False, True])
@pytest.mark.parametrize("count_firing", [True, False])
def test_relu_step_in_row_blocks_equals_the_whole_batch(chunk_rows, norm_weighted, count_firing):
    """Blocks (7 leaves a ragged last block) accumulate to the same losses, gradients, codes and L0."""
    from sae_ception.sae.fast_grads import relu_loss_and_grads

    sae = perturbed(ReluSAEConfig(d_sae=16, normalize="standardize", l1_coefficient=0.05))
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    state = TrainingState(step=0, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=False)
    if norm_weighted:
        with torch.no_grad():
            sae.W_dec_FD.mul_(torch.linspace(0.5, 2.0, 16, dtype=torch.float64).unsqueeze(1))
        sae.cfg.decoder_norm = "free"
    ref, ref_grads = reference(sae, x, state)
    sae.zero_grad(set_to_none=True)
    out = relu_loss_and_grads(sae, x, 0.05, norm_weighted=norm_weighted, chunk_rows=chunk_rows,
                              count_firing=count_firing)
    for key in ("mse", "l1", "total"):
        torch.testing.assert_close(out.losses[key], ref.losses[key])
    torch.testing.assert_close(out.codes_BF, ref.codes_BF)
    torch.testing.assert_close(out.recon, ref.recon)
    assert torch.equal(out.fired_F, (ref.codes_BF != 0).any(0))
    if count_firing:
        torch.testing.assert_close(out.l0, (ref.codes_BF != 0).double().sum(-1).mean())
    else:
        assert out.l0 is None
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], msg=name)


def test_row_blocks_fit_the_cache_on_one_cpu_thread_else_the_whole_batch(monkeypatch):
    from sae_ception.sae.fast_grads import rows_per_chunk

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert rows_per_chunk(4096, 1024, torch.device("cpu")) == 512  # 512 x 1024 float32 = 2 MiB
    assert rows_per_chunk(4096, 65536, torch.device("cpu")) == 128  # never below the GEMM-friendly minimum
    assert rows_per_chunk(64, 1024, torch.device("cpu")) == 64
    assert rows_per_chunk(4096, 1024, torch.device("meta")) == 4096
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert rows_per_chunk(4096, 1024, torch.device("cpu")) == 4096


@pytest.mark.parametrize("normalize", ["none", "scale"])
def test_relu_step_with_a_free_decoder_matches_autograd(normalize):
    """decoder_norm=free: the L1 term weights each code by its decoder row's norm, rows of unequal norms."""
    cfg = ReluSAEConfig(d_sae=16, normalize=normalize, l1_coefficient=0.05, decoder_norm="free", decoder_init_norm=0.3)
    sae = perturbed(cfg)
    with torch.no_grad():
        sae.W_dec_FD.mul_(torch.linspace(0.5, 2.0, 16, dtype=torch.float64).unsqueeze(1))
    x = torch.randn(32, 6, dtype=torch.float64) * 2
    state = TrainingState(step=3, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=False)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    norms = sae.W_dec_FD.norm(dim=-1)
    torch.testing.assert_close(ref.losses["l1"], (ref.codes_BF * norms).sum(-1).mean())  # the weighted penalty
    for key in ("mse", "l1", "total"):
        torch.testing.assert_close(out.losses[key], ref.losses[key])
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    radial = (ref_grads["W_dec_FD"] * sae.W_dec_FD).sum(-1)
    assert radial.abs().max() > 1e-3  # the penalty does pull on row norms (what `unit` would project away)


@pytest.fixture
def hand_written_topk_at_any_size(monkeypatch):
    """The TopK tests' batches are small: TopK would train them with autograd (topk.MIN_HAND_WRITTEN_VALUES)."""
    from sae_ception.sae import topk

    monkeypatch.setattr(topk, "MIN_HAND_WRITTEN_VALUES", 0)


@pytest.mark.parametrize("normalize", ["none", "standardize"])
def test_topk_step_matches_autograd_while_no_latent_is_dead(normalize, hand_written_topk_at_any_size):
    cfg = TopKSAEConfig(d_sae=16, k=3, normalize=normalize)
    sae = perturbed(cfg)
    x = torch.randn(32, 6, dtype=torch.float64)
    state = TrainingState(step=0, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=False)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    torch.testing.assert_close(out.losses["mse"], ref.losses["mse"])
    torch.testing.assert_close(out.losses["total"], ref.losses["total"])
    torch.testing.assert_close(out.codes_BF, ref.codes_BF)
    assert ((out.codes_BF != 0).sum(-1) <= 3).all()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    assert torch.equal(out.fired_F, (ref.codes_BF != 0).any(0))


def test_topk_with_dead_latents_takes_the_hand_written_path_with_auxk(hand_written_topk_at_any_size):
    """AuxK is hand-written too (tests/sae/test_fast_grads_topk_*.py check its edge cases)."""
    cfg = TopKSAEConfig(d_sae=16, k=3, aux_k=4)
    sae = perturbed(cfg)
    x = torch.randn(32, 6, dtype=torch.float64)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:8] = True
    out, grads = fast(sae, x, TrainingState(step=0, dead_F=dead, any_dead=True))
    ref, ref_grads = reference(sae, x, TrainingState(step=0, dead_F=dead, any_dead=True))
    assert out.fired_F is not None  # the hand-written step's (autograd's leaves it to the trainer)
    assert out.losses["aux"] > 0
    torch.testing.assert_close(out.losses["total"], ref.losses["total"])
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
