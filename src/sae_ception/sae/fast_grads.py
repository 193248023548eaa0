"""Hand-written forward and backward passes of one SAE training batch, for the ReLU and TopK SAEs.

Autograd on `forward` is correct but does work a training step does not need. Written out here:
- the pre-encoder bias b_dec is folded into the encoder bias, b_enc − W_encᵀ b_dec, so no input gradient
  (a whole B × d_in × d_sae GEMM) is computed; its effect on the gradients of W_enc and b_dec is a
  rank-one term and a matrix-vector product;
- the L1 gradient is a constant, added inside the decoder-gradient GEMM as its bias;
- the ReLU backward, L0 and the firing statistics reuse tensors the forward pass already made;
- the TopK decoder reads only the k chosen rows of W_dec (`embedding_bag`), not a dense B × d_sae matrix;
- every large tensor lives in a `Workspace` reused from step to step: allocating fresh 16 MB tensors each
  step made the CPU allocator map and fault in new pages every time (about a third of a step).
The gradients are exactly those of `forward`'s loss (tests/sae/test_fast_grads.py compares them).
Tensors in the returned `SAEOutput` and the `.grad`s live in the workspace: valid until the next step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_ception.sae.base import SAEOutput


class Workspace:
    """Named scratch tensors, reallocated only when a shape, dtype or device changes."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape, like: Tensor) -> Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != tuple(shape) or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer

    def like(self, param: torch.nn.Parameter) -> Tensor:
        """A gradient buffer laid out like `param` (the fused Adam kernel walks both with its strides)."""
        name = f"grad_{id(param)}"
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != param.shape or buffer.stride() != param.stride() or buffer.dtype != param.dtype:
            buffer = self._buffers[name] = torch.empty_like(param)
        return buffer


def workspace(sae) -> Workspace:
    found = sae.__dict__.get("_workspace")
    if found is None:
        found = sae.__dict__["_workspace"] = Workspace()
    return found


def _folded_encoder_bias(sae) -> Tensor:
    """b_enc − W_encᵀ b_dec: the encoder bias once the pre-encoder subtraction of b_dec is folded in."""
    return torch.addmv(sae.b_enc_F, sae.W_enc_DF.T, sae.b_dec_D, alpha=-1)


def _mse_and_recon_grad(ws: Workspace, recon_norm_BD: Tensor, x_norm_BD: Tensor) -> tuple[Tensor, Tensor]:
    diff_BD = torch.sub(recon_norm_BD, x_norm_BD, out=ws.get("diff", x_norm_BD.shape, x_norm_BD))
    flat = diff_BD.view(-1)
    mse = torch.dot(flat, flat) / flat.numel()
    return mse, diff_BD.mul_(2.0 / flat.numel())


def _decoder_weight_grad(sae, ws: Workspace, codes_BF: Tensor, g_recon_BD: Tensor) -> None:
    grad = ws.like(sae.W_dec_FD)
    torch.mm(codes_BF.T, g_recon_BD, out=grad)
    sae.W_dec_FD.grad = grad


def _encoder_grads(sae, ws: Workspace, x_norm_BD: Tensor, g_pre_BF: Tensor, g_recon_sum_D: Tensor) -> None:
    """W_enc, b_enc and b_dec gradients, given the pre-activation gradient g_pre (B × F)."""
    g_pre_sum_F = g_pre_BF.sum(0)
    grad = ws.like(sae.W_enc_DF)
    torch.mm(x_norm_BD.T, g_pre_BF, out=grad)
    sae.W_enc_DF.grad = grad.addr_(sae.b_dec_D, g_pre_sum_F, alpha=-1)
    sae.b_enc_F.grad = g_pre_sum_F
    sae.b_dec_D.grad = torch.addmv(g_recon_sum_D, sae.W_enc_DF, g_pre_sum_F, alpha=-1)


def _recon(sae, recon_norm_BD: Tensor) -> Tensor:
    return recon_norm_BD if sae.cfg.normalize == "none" else sae.denormalize(recon_norm_BD)


@torch.no_grad()
def relu_loss_and_grads(sae, x_BD: Tensor, l1_weight: float) -> SAEOutput:
    """mse + l1_weight · mean Σ_f z_f with z = ReLU(x W_enc + b_enc − W_encᵀ b_dec) (codes are ≥ 0, so |z| = z)."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    batch, width = x_norm_BD.shape[0], sae.d_sae
    codes_BF = torch.addmm(_folded_encoder_bias(sae), x_norm_BD, sae.W_enc_DF,
                           out=ws.get("codes", (batch, width), x_norm_BD)).relu_()
    recon_norm_BD = torch.addmm(sae.b_dec_D, codes_BF, sae.W_dec_FD, out=ws.get("recon", x_norm_BD.shape, x_norm_BD))
    recon_BD = _recon(sae, recon_norm_BD)
    code_sums_F = codes_BF.sum(0)
    l1 = code_sums_F.sum() / batch
    mse, g_recon_BD = _mse_and_recon_grad(ws, recon_norm_BD, x_norm_BD)
    _decoder_weight_grad(sae, ws, codes_BF, g_recon_BD)
    l1_grad_F = torch.full_like(code_sums_F, l1_weight / batch)
    g_pre_BF = torch.addmm(l1_grad_F, g_recon_BD, sae.W_dec_FD.T, out=ws.get("g_pre", (batch, width), x_norm_BD))
    firing_BF = torch.sign(codes_BF, out=ws.get("firing", (batch, width), x_norm_BD))  # ReLU' and L0 in one pass
    g_pre_BF.mul_(firing_BF)
    _encoder_grads(sae, ws, x_norm_BD, g_pre_BF, g_recon_BD.sum(0))
    losses = {"mse": mse, "l1": l1, "total": mse + l1_weight * l1}
    return SAEOutput(recon=recon_BD, codes_BF=codes_BF, losses=losses, fired_F=code_sums_F > 0,
                     l0=firing_BF.sum() / batch)


@torch.no_grad()
def topk_loss_and_grads(sae, x_BD: Tensor, k: int) -> SAEOutput:
    """mse of a TopK SAE when no latent is dead (so the AuxK term is 0): codes are ReLU of the k largest
    pre-activations, decoded from those k rows of W_dec only."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    batch, width = x_norm_BD.shape[0], sae.d_sae
    pre_BF = torch.addmm(_folded_encoder_bias(sae), x_norm_BD, sae.W_enc_DF, out=ws.get("codes", (batch, width), x_norm_BD))
    values_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
    values_BK = values_BK.relu_()
    recon_norm_BD = F.embedding_bag(idx_BK, sae.W_dec_FD, per_sample_weights=values_BK, mode="sum").add_(sae.b_dec_D)
    recon_BD = _recon(sae, recon_norm_BD)
    mse, g_recon_BD = _mse_and_recon_grad(ws, recon_norm_BD, x_norm_BD)
    # decoder: dL/dW_dec[f] = Σ_b z_bf g_b over the chosen (b, f); dL/dz_bk = W_dec[idx_bk] · g_b
    codes_BF = pre_BF.zero_().scatter_(-1, idx_BK, values_BK)  # the dense codes reuse pre's memory
    _decoder_weight_grad(sae, ws, codes_BF, g_recon_BD)
    # one dense GEMM then a gather beats gathering k decoder rows per example (B·k·d_in floats) on CPU
    g_pre_BF = torch.mm(g_recon_BD, sae.W_dec_FD.T, out=ws.get("g_pre", (batch, width), x_norm_BD))
    g_values_BK = g_pre_BF.gather(-1, idx_BK).mul_(values_BK.sign())  # the ReLU after the top-k
    g_pre_BF = g_pre_BF.zero_().scatter_(-1, idx_BK, g_values_BK)
    _encoder_grads(sae, ws, x_norm_BD, g_pre_BF, g_recon_BD.sum(0))
    fired_F = torch.zeros(width, dtype=torch.bool, device=idx_BK.device)
    fired_F[idx_BK[values_BK > 0]] = True
    aux = mse.new_zeros(())
    losses = {"mse": mse, "aux": aux, "total": mse + sae.cfg.aux_coefficient * aux}
    return SAEOutput(recon=recon_BD, codes_BF=codes_BF, losses=losses, fired_F=fired_F,
                     l0=values_BK.sign().sum() / batch)
