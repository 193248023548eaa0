"""The hand-written training steps on a CUDA device equal autograd there (skipped without one): the accelerator
paths differ from the CPU's (BatchTopK's fixed-size selection, whole-batch JumpReLU/ReLU steps, CUDA kernels)."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae.base import TrainingState
from sae_ception.sae.batchtopk import BatchTopKSAEConfig
from sae_ception.sae.jumprelu import JumpReLUSAEConfig
from sae_ception.sae.relu import ReluSAEConfig
from sae_ception.sae.topk import TopKSAEConfig

from tests.sae.test_fast_grads import fast, perturbed, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def hand_written_batchtopk_at_any_size(monkeypatch):
    from sae_ception.sae import batchtopk

    monkeypatch.setattr(batchtopk, "MIN_HAND_WRITTEN_VALUES", 0)

CONFIGS = {
    "relu": lambda: ReluSAEConfig(d_sae=64, normalize="standardize", l1_coefficient=0.05),
    "topk": lambda: TopKSAEConfig(d_sae=64, k=4, normalize="standardize"),
    "jumprelu": lambda: JumpReLUSAEConfig(d_sae=64, normalize="standardize", l0_coefficient=0.05, bandwidth=0.6,
                                          initial_threshold=0.3),
    "batchtopk": lambda: BatchTopKSAEConfig(d_sae=64, k=4, normalize="standardize"),
}


@pytest.mark.parametrize("sae_type", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hand_written_step_matches_autograd_on_cuda(sae_type, dtype):
    sae = perturbed(CONFIGS[sae_type](), d_in=12).to("cuda", dtype).train()
    if sae_type == "jumprelu":
        with torch.no_grad():
            sae.threshold_param_F.copy_(torch.linspace(-0.2, 1.0, 64, dtype=dtype, device="cuda"))
    x = (torch.randn(256, 12, dtype=torch.float64) * 2).to("cuda", dtype)
    state = TrainingState(step=3, dead_F=torch.zeros(64, dtype=torch.bool, device="cuda"), any_dead=False)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    for key in ref.losses:
        torch.testing.assert_close(out.losses[key], ref.losses[key].detach(), msg=key)
    torch.testing.assert_close(out.codes_BF, ref.codes_BF.detach())
    torch.testing.assert_close(out.recon, ref.recon.detach())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    assert torch.equal(out.fired_F, (ref.codes_BF != 0).any(0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batchtopk_step_with_dead_latents_matches_autograd_on_cuda(dtype):
    """AuxK on the accelerator path: live latents masked to -inf, a fixed aux_k per example."""
    sae = perturbed(BatchTopKSAEConfig(d_sae=64, k=4, aux_k=8, normalize="standardize"), d_in=12)
    sae = sae.to("cuda", dtype).train()
    x = torch.randn(256, 12, dtype=torch.float64).to("cuda", dtype)
    dead = torch.arange(64, device="cuda") % 3 == 0
    state = TrainingState(step=3, dead_F=dead, any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.losses["aux"] > 0
    for key in ref.losses:
        torch.testing.assert_close(out.losses[key], ref.losses[key].detach(), msg=key)
    torch.testing.assert_close(out.codes_BF, ref.codes_BF.detach())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
