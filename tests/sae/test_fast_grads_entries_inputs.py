"""TopK's and BatchTopK's hand-written steps (fast_grads.topk_loss_and_grads and the shared entries step) on the
inputs a review found them failing on: a column-major batch with dead latents, aux_k left to the SAE, an SAE
moved to another device between steps."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae import batchtopk as batchtopk_module
from sae_ception.sae import fast_grads
from sae_ception.sae import topk as topk_module
from sae_ception.sae.base import TrainingState
from sae_ception.sae.batchtopk import BatchTopKSAEConfig
from sae_ception.sae.topk import TopKSAEConfig

from tests.sae.test_fast_grads import fast, perturbed, reference
from tests.sae.test_fast_grads_jumprelu_batchtopk import assert_same_step


@pytest.fixture(autouse=True)
def hand_written_at_any_size(monkeypatch):
    monkeypatch.setattr(topk_module, "MIN_HAND_WRITTEN_VALUES", 0)
    monkeypatch.setattr(batchtopk_module, "MIN_HAND_WRITTEN_VALUES", 0)


def dead_state(width: int = 32, count: int = 11) -> TrainingState:
    return TrainingState(step=0, dead_F=torch.arange(width) < count, any_dead=True)


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk"])
@pytest.mark.parametrize("normalize", ["none", "standardize"])
def test_column_major_batch_with_dead_latents_matches_autograd(sae_type, normalize):
    """forward accepts any layout; the hand-written step must too once AuxK runs (x = y.T, e.g. activations
    stored feature-major or a Fortran-ordered numpy array)."""
    cfg = (TopKSAEConfig if sae_type == "topk" else BatchTopKSAEConfig)(d_sae=32, k=3, aux_k=4, normalize=normalize)
    sae = perturbed(cfg, d_in=8).train()
    x = torch.randn(8, 20, dtype=torch.float64).T
    assert not x.is_contiguous()
    state = dead_state()
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert_same_step(out, ref, grads, ref_grads)


def test_topk_step_without_aux_k_defaults_to_the_sae_s_aux_k():
    sae = perturbed(TopKSAEConfig(d_sae=32, k=3, aux_k=4, normalize="scale"), d_in=8).train()
    x = torch.randn(20, 8, dtype=torch.float64)
    state = dead_state()
    ref, ref_grads = reference(sae, x, state)
    sae.zero_grad(set_to_none=True)
    out = fast_grads.topk_loss_and_grads(sae, x, sae.cfg.k, dead_F=state.dead_F)  # aux_k left at its default
    torch.testing.assert_close(out.losses["total"], ref.losses["total"].detach())
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], msg=name)


def test_step_after_the_sae_moves_to_another_device():
    """`.to(device)` keeps the Parameter objects (CPU <-> CUDA by `.data =`; here, with no second device, by
    swap_tensors onto the meta device), so `grad_{id(param)}` finds the old device's buffer."""
    sae = perturbed(TopKSAEConfig(d_sae=32, k=3, aux_k=4, normalize="scale"), d_in=8).train()
    x = torch.randn(20, 8, dtype=torch.float64)
    dead_F = dead_state().dead_F
    fast_grads.topk_loss_and_grads(sae, x, 3, dead_F=dead_F, aux_k=4)
    sae.zero_grad(set_to_none=True)  # as the trainer's optimiser does after every step
    ids = [id(p) for p in sae.parameters()]
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        sae.to("meta")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert [id(p) for p in sae.parameters()] == ids
    fast_grads.topk_loss_and_grads(sae, x.to("meta"), 3, dead_F=dead_F.to("meta"), aux_k=4)
    for name, param in sae.named_parameters():
        assert param.grad.device == param.device, name
