"""Hand-written forward and backward passes of one SAE training batch, for the ReLU and TopK SAEs.

Autograd on `forward` is correct but does work a training step does not need. Written out here:
- the pre-encoder bias b_dec is folded into the encoder bias, b_enc − W_encᵀ b_dec, so no input gradient
  (a whole B × d_in × d_sae GEMM) is computed; its effect on the gradients of W_enc and b_dec is a
  rank-one term and a matrix-vector product;
- biases ride inside the GEMMs as an extra input column of ones (so no GEMM first copies a bias into its
  B × d_sae output), and that column also makes the W_enc-gradient GEMM sum g_pre for b_enc; ReLU's L1
  gradient is such a bias;
- the ReLU backward, L0 and the firing statistics reuse tensors the forward pass already made, and sums
  over the batch are matrix-vector products (a column `.sum(0)` is several times slower on CPU); on steps
  whose L0 nobody reads, the ReLU backward is one fused pass and L0 is not counted;
- on a single CPU thread the ReLU step runs in row blocks small enough for the core's cache
  (`rows_per_chunk`), so the elementwise passes between GEMMs read and write cache, not main memory;
- the TopK decoder reads only the k chosen rows of W_dec (`embedding_bag`), not a dense B × d_sae matrix;
- every large tensor lives in a `Workspace` reused from step to step: allocating fresh 16 MB tensors each
  step made the CPU allocator map and fault in new pages every time.
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

    def ones(self, n: int, like: Tensor) -> Tensor:
        """A vector of n ones: column sums as GEMVs (a B x F `.sum(0)` is several times slower on CPU)."""
        name = f"ones_{n}"
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[name] = torch.ones(n, dtype=like.dtype, device=like.device)
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


def _with_ones_column(ws: Workspace, name: str, x_BD: Tensor) -> Tensor:
    """A (B, D + 1) scratch matrix whose last column is ones (the caller fills the first D)."""
    aug_BE = ws.get(name, (x_BD.shape[0], x_BD.shape[1] + 1), x_BD)
    aug_BE[:, -1].fill_(1)
    return aug_BE


def _augmented_encoder(sae, ws: Workspace, x_norm_BD: Tensor) -> tuple[Tensor, Tensor]:
    """[x | 1] (B × (D+1)) and [W_enc ; b_enc − W_encᵀ b_dec] ((D+1) × F): their product is the pre-activation
    with the pre-encoder subtraction of b_dec folded into the bias, and the bias inside the GEMM."""
    d_in = x_norm_BD.shape[1]
    x_aug_BE = _with_ones_column(ws, "x_aug", x_norm_BD)
    x_aug_BE[:, :d_in].copy_(x_norm_BD)
    encoder_EF = ws.get("encoder_aug", (d_in + 1, sae.d_sae), x_norm_BD)
    encoder_EF[:d_in].copy_(sae.W_enc_DF)
    torch.addmv(sae.b_enc_F, sae.W_enc_DF.T, sae.b_dec_D, alpha=-1, out=encoder_EF[d_in])
    return x_aug_BE, encoder_EF


def _mse_and_recon_grad(ws: Workspace, recon_norm_BD: Tensor, x_norm_BD: Tensor) -> tuple[Tensor, Tensor]:
    diff_BD = torch.sub(recon_norm_BD, x_norm_BD, out=ws.get("diff", x_norm_BD.shape, x_norm_BD))
    flat = diff_BD.view(-1)
    mse = torch.dot(flat, flat) / flat.numel()
    return mse, diff_BD.mul_(2.0 / flat.numel())


def _decoder_weight_grad(sae, ws: Workspace, codes_BF: Tensor, g_recon_BD: Tensor) -> None:
    grad = ws.like(sae.W_dec_FD)
    torch.mm(codes_BF.T, g_recon_BD, out=grad)
    sae.W_dec_FD.grad = grad


def _encoder_grads(sae, ws: Workspace, x_aug_BE: Tensor, g_pre_BF: Tensor, g_recon_sum_D: Tensor) -> None:
    """W_enc, b_enc and b_dec gradients, given the pre-activation gradient g_pre (B × F): one GEMM with
    [x | 1] gives W_enc's gradient and, in its last row, Σ_b g_pre (b_enc's)."""
    grad_encoder_EF = torch.mm(x_aug_BE.T, g_pre_BF, out=ws.get("grad_encoder_aug", (x_aug_BE.shape[1], sae.d_sae), g_pre_BF))
    _set_encoder_grads(sae, grad_encoder_EF[:-1], grad_encoder_EF[-1], g_recon_sum_D)


def _set_encoder_grads(sae, grad_W_enc: Tensor, g_pre_sum_F: Tensor, g_recon_sum_D: Tensor) -> None:
    """Undo the folding of b_dec into the encoder bias: W_enc gets −b_dec ⊗ Σ g_pre, b_dec gets −W_enc Σ g_pre."""
    sae.W_enc_DF.grad = grad_W_enc.addr_(sae.b_dec_D, g_pre_sum_F, alpha=-1)
    sae.b_enc_F.grad = g_pre_sum_F
    sae.b_dec_D.grad = torch.addmv(g_recon_sum_D, sae.W_enc_DF, g_pre_sum_F, alpha=-1)


CHUNK_BYTES = 2 << 20  # CPU: a row block's B x d_sae scratch tensors stay in a core's L2 cache (2 MiB here)
MIN_CHUNK_ROWS = 128  # below this the GEMMs lose more than the cache saves


def rows_per_chunk(batch: int, width: int, device: torch.device) -> int:
    """Rows processed at once. On one CPU thread the step runs in row blocks whose B × d_sae tensors fit in
    cache, so the elementwise passes between GEMMs (ReLU, masks, sums) never go out to slower memory. With
    several threads each op's fork/join costs more than the cache saves, and an accelerator wants few,
    large kernels: both take the whole batch."""
    if device.type != "cpu" or torch.get_num_threads() > 1:
        return batch
    return min(batch, max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * width)))


@torch.no_grad()
def relu_loss_and_grads(sae, x_BD: Tensor, l1_weight: float, norm_weighted: bool = False,
                        chunk_rows: int | None = None, count_firing: bool = True) -> SAEOutput:
    """mse + l1_weight · mean Σ_f z_f with z = ReLU(x W_enc + b_enc − W_encᵀ b_dec) (codes are ≥ 0, so |z| = z);
    `norm_weighted`: Σ_f z_f ‖W_dec[f]‖ instead, which also pulls each decoder row's norm down.
    Rows are processed in blocks of `chunk_rows` (default: `rows_per_chunk`); weight gradients and the
    per-latent sums accumulate across blocks, so the result does not depend on the block size.
    `count_firing=False` skips L0 (`l0` is None): the ReLU backward is then one fused pass instead of a sign
    pass, a multiply and a count. Which latents fired is exact either way (codes are ≥ 0: their sum is > 0)."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    (batch, d_in), width = x_norm_BD.shape, sae.d_sae
    chunk = chunk_rows or rows_per_chunk(batch, width, x_norm_BD.device)
    codes_BF = ws.get("codes", (batch, width), x_norm_BD)
    recon_norm_BD = ws.get("recon", x_norm_BD.shape, x_norm_BD)
    diff_BD = ws.get("diff", x_norm_BD.shape, x_norm_BD)
    g_pre_CF = ws.get("g_pre", (chunk, width), x_norm_BD)
    firing_CF = ws.get("firing", (chunk, width), x_norm_BD)
    ones_B = ws.ones(batch, x_norm_BD)
    # biases ride inside the GEMMs as one more input column of ones (a GEMM with a bias first copies the
    # bias into all B x d_sae outputs); the same column makes the W_enc gradient GEMM also sum g_pre (b_enc's)
    x_aug_BE, encoder_EF = _augmented_encoder(sae, ws, x_norm_BD)
    g_aug_BE = _with_ones_column(ws, "g_aug", x_norm_BD)
    decoder_t_EF = ws.get("decoder_t_aug", (d_in + 1, width), x_norm_BD)
    decoder_t_EF[:d_in].copy_(sae.W_dec_FD.T)
    if norm_weighted:
        norms_F = torch.linalg.vector_norm(sae.W_dec_FD, dim=-1)
        torch.mul(norms_F, l1_weight / batch, out=decoder_t_EF[d_in])
    else:
        decoder_t_EF[d_in].fill_(l1_weight / batch)
    grad_W_dec = ws.like(sae.W_dec_FD)
    grad_encoder_EF = ws.get("grad_encoder_aug", (d_in + 1, width), x_norm_BD)  # rows: W_enc's gradient, then b_enc's
    code_sums_F, fire_counts_F = ws.get("code_sums", (width,), x_norm_BD), ws.get("fire_counts", (width,), x_norm_BD)
    g_recon_sum_D = ws.get("g_recon_sum", (d_in,), x_norm_BD)
    recon_grad_scale = 2.0 / x_norm_BD.numel()
    squared_error = x_norm_BD.new_zeros(())
    for block, start in enumerate(range(0, batch, chunk)):
        rows = slice(start, min(start + chunk, batch))
        n, beta = rows.stop - rows.start, 0 if block == 0 else 1  # beta 0: the first block overwrites
        x_CD, ones_C = x_norm_BD[rows], ones_B[:n]
        z_CF = torch.mm(x_aug_BE[rows], encoder_EF, out=codes_BF[rows]).relu_()
        recon_CD = torch.addmm(sae.b_dec_D, z_CF, sae.W_dec_FD, out=recon_norm_BD[rows])
        diff_CD = torch.sub(recon_CD, x_CD, out=diff_BD[rows])
        squared_error += torch.dot(diff_CD.view(-1), diff_CD.view(-1))
        g_CD = torch.mul(diff_CD, recon_grad_scale, out=g_aug_BE[rows, :d_in])
        torch.addmm(grad_W_dec, z_CF.T, g_CD, beta=beta, out=grad_W_dec)
        torch.addmv(code_sums_F, z_CF.T, ones_C, beta=beta, out=code_sums_F)
        torch.addmv(g_recon_sum_D, g_CD.T, ones_C, beta=beta, out=g_recon_sum_D)
        g_pre = torch.mm(g_aug_BE[rows], decoder_t_EF, out=g_pre_CF[:n])
        if count_firing:
            fire_CF = torch.sign(z_CF, out=firing_CF[:n])  # ReLU' and L0 in one pass
            torch.addmv(fire_counts_F, fire_CF.T, ones_C, beta=beta, out=fire_counts_F)
            g_pre.mul_(fire_CF)
        else:  # ReLU' applied in one pass: g_pre where the code is > 0, else 0
            torch.ops.aten.threshold_backward.grad_input(g_pre, z_CF, 0.0, grad_input=g_pre)
        torch.addmm(grad_encoder_EF, x_aug_BE[rows].T, g_pre, beta=beta, out=grad_encoder_EF)
    grad_W_enc, g_pre_sum_F = grad_encoder_EF[:d_in], grad_encoder_EF[d_in]
    if norm_weighted:  # d/dW_dec[f] of Σ_b z_bf ‖W_dec[f]‖ is (Σ_b z_bf) W_dec[f] / ‖W_dec[f]‖
        l1 = torch.dot(code_sums_F, norms_F) / batch
        grad_W_dec.addcmul_(sae.W_dec_FD, code_sums_F.div(norms_F.clamp_min(1e-8)).mul_(l1_weight / batch).unsqueeze(1))
    else:
        l1 = code_sums_F.sum() / batch
    sae.W_dec_FD.grad = grad_W_dec
    _set_encoder_grads(sae, grad_W_enc, g_pre_sum_F, g_recon_sum_D)
    mse = squared_error / x_norm_BD.numel()
    losses = {"mse": mse, "l1": l1, "total": mse + l1_weight * l1}
    raw_error = squared_error if sae.cfg.normalize == "none" else None  # else the normalised space's
    return SAEOutput(recon=sae.denormalize(recon_norm_BD), codes_BF=codes_BF, losses=losses, fired_F=code_sums_F > 0,
                     l0=fire_counts_F.sum() / batch if count_firing else None, squared_error=raw_error)


@torch.no_grad()
def topk_loss_and_grads(sae, x_BD: Tensor, k: int) -> SAEOutput:
    """mse of a TopK SAE when no latent is dead (so the AuxK term is 0): codes are ReLU of the k largest
    pre-activations, decoded from those k rows of W_dec only."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    batch, width = x_norm_BD.shape[0], sae.d_sae
    x_aug_BE, encoder_EF = _augmented_encoder(sae, ws, x_norm_BD)
    pre_BF = torch.mm(x_aug_BE, encoder_EF, out=ws.get("codes", (batch, width), x_norm_BD))
    values_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
    values_BK = values_BK.relu_()
    recon_norm_BD = F.embedding_bag(idx_BK, sae.W_dec_FD, per_sample_weights=values_BK, mode="sum").add_(sae.b_dec_D)
    recon_BD = sae.denormalize(recon_norm_BD)
    mse, g_recon_BD = _mse_and_recon_grad(ws, recon_norm_BD, x_norm_BD)
    # decoder: dL/dW_dec[f] = Σ_b z_bf g_b over the chosen (b, f); dL/dz_bk = W_dec[idx_bk] · g_b
    codes_BF = pre_BF.zero_().scatter_(-1, idx_BK, values_BK)  # the dense codes reuse pre's memory
    _decoder_weight_grad(sae, ws, codes_BF, g_recon_BD)
    # one dense GEMM then a gather beats gathering k decoder rows per example (B·k·d_in floats) on CPU
    g_pre_BF = torch.mm(g_recon_BD, sae.W_dec_FD.T, out=ws.get("g_pre", (batch, width), x_norm_BD))
    g_values_BK = g_pre_BF.gather(-1, idx_BK).mul_(values_BK.sign())  # the ReLU after the top-k
    g_pre_BF = g_pre_BF.zero_().scatter_(-1, idx_BK, g_values_BK)
    _encoder_grads(sae, ws, x_aug_BE, g_pre_BF, g_recon_BD.sum(0))
    fired_F = torch.zeros(width, dtype=torch.bool, device=idx_BK.device)
    fired_F[idx_BK[values_BK > 0]] = True
    aux = mse.new_zeros(())
    losses = {"mse": mse, "aux": aux, "total": mse + sae.cfg.aux_coefficient * aux}
    return SAEOutput(recon=recon_BD, codes_BF=codes_BF, losses=losses, fired_F=fired_F,
                     l0=values_BK.sign().sum() / batch)
