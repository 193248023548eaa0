"""TopK's hand-written step on a CUDA device (skipped without one): the accelerator path (fixed-size AuxK
selection, whole-matrix copies) equals autograd there, never waits on the device (no host sync), and a whole
training ends at autograd's weights (with the trainer's any_dead hint, which lags on accelerators)."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae import batchtopk as batchtopk_module
from sae_ception.sae import topk as topk_module
from sae_ception.sae.base import SparseAutoencoder, TrainingState
from sae_ception.sae.batchtopk import BatchTopKSAEConfig
from sae_ception.sae.topk import TopKSAEConfig

from tests.sae.test_fast_grads import fast, perturbed, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = {
    "topk": lambda aux_k: TopKSAEConfig(d_sae=64, k=4, aux_k=aux_k, normalize="standardize"),
    "batchtopk": lambda aux_k: BatchTopKSAEConfig(d_sae=64, k=4, aux_k=aux_k, normalize="standardize"),
}


@pytest.fixture(autouse=True)
def hand_written_at_any_size(monkeypatch):
    monkeypatch.setattr(batchtopk_module, "MIN_HAND_WRITTEN_VALUES", 0)


def dead_state(every: int) -> TrainingState:
    dead = (torch.arange(64, device="cuda") % every == 0) if every else torch.zeros(64, dtype=torch.bool, device="cuda")
    return TrainingState(step=3, dead_F=dead, any_dead=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dead_every, aux_k", [(3, 8), (3, 30), (1, 8), (0, 8)])  # fewer/more dead than aux_k, all,
def test_topk_step_with_dead_latents_matches_autograd_on_cuda(dtype, dead_every, aux_k):  # none (a stale hint)
    sae = perturbed(CONFIGS["topk"](aux_k), d_in=12).to("cuda", dtype).train()
    x = torch.randn(256, 12, dtype=torch.float64).to("cuda", dtype)
    state = dead_state(dead_every)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.fired_F is not None  # the hand-written step's
    assert (out.losses["aux"] > 0) == (dead_every > 0)
    for key in ref.losses:
        torch.testing.assert_close(out.losses[key], ref.losses[key].detach(), msg=key)
    torch.testing.assert_close(out.codes_BF, ref.codes_BF.detach())
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


@pytest.mark.parametrize("sae_type", list(CONFIGS))
@pytest.mark.parametrize("dead_every", [0, 3])
def test_hand_written_step_never_syncs_with_the_host_on_cuda(sae_type, dead_every):
    sae = perturbed(CONFIGS[sae_type](8), d_in=12).to("cuda", torch.float32).train()
    x = torch.randn(256, 12, device="cuda")
    state = dead_state(dead_every) if dead_every else TrainingState(step=3, dead_F=dead_state(0).dead_F, any_dead=False)
    sae.loss_and_grads(x, state)  # the workspace's first allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sae.loss_and_grads(x, state)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_topk_training_on_cuda_equals_training_with_autograd(monkeypatch):
    from accelerate import Accelerator

    from sae_ception.sae import train_sae

    from tests.sae.helpers import make_sae, sparse_data

    hand_written, calls = topk_module.topk_loss_and_grads, []
    monkeypatch.setattr(topk_module, "topk_loss_and_grads",
                        lambda *a, **kw: calls.append(kw.get("dead_F") is not None) or hand_written(*a, **kw))
    acts = sparse_data(n=512)
    settings = dict(d_in=16, d_sae=128, k=2, aux_k=8, epochs=3, batch_size=64, lr=1e-2, log_every=5, grad_clip=0.02)
    hand = make_sae("topk", **settings)
    train_sae(hand, acts, hand.cfg, accelerator=Accelerator(), seed=0, show_progress=False)
    assert hand.W_dec_FD.device.type == "cuda" and len(calls) == 24 and any(calls)
    monkeypatch.setattr(type(hand), "loss_and_grads", SparseAutoencoder.loss_and_grads)
    auto = make_sae("topk", **settings)
    train_sae(auto, acts, auto.cfg, accelerator=Accelerator(), seed=0, show_progress=False)
    for (name, a), b in zip(hand.state_dict().items(), auto.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
