"""Hand-written forward and backward passes of one SAE training batch, for the ReLU, TopK, JumpReLU and
BatchTopK SAEs.

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
- JumpReLU's masks (which codes fire, which pre-activations lie in the threshold's kernel window) are all
  read off one difference pre − θ by fused backward kernels, one pass each (`jumprelu_loss_and_grads`);
- on a single CPU thread the ReLU and JumpReLU steps run in row blocks small enough for the core's cache
  (`rows_per_chunk`), so the elementwise passes between GEMMs read and write cache, not main memory;
- TopK and BatchTopK: after the one encoder GEMM everything works on the k·B kept entries alone (k to each
  example for TopK, any number for BatchTopK): the decoder (`embedding_bag` over the kept rows of W_dec),
  its gradient, the code gradients and the encoder's gradient (`_entries_loss_and_grads`, shared by both);
  AuxK too, while latents are dead: on CPU as GEMMs over the dead columns while they are few
  (`DENSE_AUXK_FACTOR`), else on its own aux_k entries per example; on CPU BatchTopK's kept entries are
  found without a full sort of the batch (`batch_top_entries`);
- every large tensor of the dense steps lives in a `Workspace` reused from step to step: allocating fresh
  16 MB tensors each step made the CPU allocator map and fault in new pages every time (the entries steps'
  embedding_bag outputs are fresh: its out= variant measured no faster).
The gradients are those of `forward`'s loss, up to rounding (tests/sae/test_fast_grads*.py compare them; folding
b_dec into the encoder bias rounds differently in float32 when inputs sit far from the origin).
Some tensors in the returned `SAEOutput` and some `.grad`s (the dense steps' codes and gradients, the entries
steps' codes and encoder gradients) live in the workspace: valid until the next step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
        if (buffer is None or buffer.shape != param.shape or buffer.stride() != param.stride()
                or buffer.dtype != param.dtype or buffer.device != param.device):  # .to() keeps the Parameter
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


def _set_encoder_grads(sae, grad_W_enc: Tensor, g_pre_sum_F: Tensor, g_recon_sum_D: Tensor) -> None:
    """Undo the folding of b_dec into the encoder bias: W_enc gets −b_dec ⊗ Σ g_pre, b_dec gets −W_enc Σ g_pre."""
    sae.W_enc_DF.grad = grad_W_enc.addr_(sae.b_dec_D, g_pre_sum_F, alpha=-1)
    sae.b_enc_F.grad = g_pre_sum_F
    sae.b_dec_D.grad = torch.addmv(g_recon_sum_D, sae.W_enc_DF, g_pre_sum_F, alpha=-1)


def _dense_grad_buffers(sae, ws: Workspace, x_norm_BD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ReLU and JumpReLU steps' accumulators, summed over row blocks: (W_dec's gradient [F, D], the augmented
    encoder's gradient [D + 1, F] (rows: W_enc's, then b_enc's), firing counts [F], Σ_b dL/drecon [D])."""
    d_in, width = x_norm_BD.shape[1], sae.d_sae
    return (ws.like(sae.W_dec_FD), ws.get("grad_encoder_aug", (d_in + 1, width), x_norm_BD),
            ws.get("fire_counts", (width,), x_norm_BD), ws.get("g_recon_sum", (d_in,), x_norm_BD))


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
    grad_W_dec, grad_encoder_EF, fire_counts_F, g_recon_sum_D = _dense_grad_buffers(sae, ws, x_norm_BD)
    code_sums_F = ws.get("code_sums", (width,), x_norm_BD)
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
def jumprelu_loss_and_grads(sae, x_BD: Tensor, l0_weight: float, chunk_rows: int | None = None) -> SAEOutput:
    """mse + l0_weight · mean_b Σ_f H(pre_bf − θ_f) for a JumpReLU SAE (sae/jumprelu.py): codes
    z = pre · H(pre − θ), θ = max(θ_param, 0), pre = x W_enc + b_enc − W_encᵀ b_dec (B × F).

    H has no useful derivative; θ gets the straight-through ones that JumpReLUFunction and StepFunction define
    (Rajamanoharan et al. 2024): with ε = cfg.bandwidth and the rectangle kernel's window
    w_bf = [|pre_bf − θ_f| < ε/2],
        dL/dθ_f = −(1/ε) Σ_b w_bf (θ_f · dL/dz_bf + l0_weight / B)     (JumpReLU's term, then the L0 term's),
    passed on to θ_param where θ_param ≥ 0 (clamp_min's derivative); pre gets dL/dz · H(pre − θ) (the L0 term
    gives pre nothing). One difference gap = pre − θ serves every mask: gap > 0 exactly where pre > θ (a
    difference of two floats is 0 only when they are equal, and has the sign of their order), and the window
    is −ε/2 < gap < ε/2 (|·| is exact). Codes are > 0 exactly where they fire (θ ≥ 0), so fired_F and L0 come
    from a sign pass. Rows are processed in blocks of `chunk_rows` (default: `rows_per_chunk`) as in
    `relu_loss_and_grads`; the result does not depend on the block size."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    (batch, d_in), width = x_norm_BD.shape, sae.d_sae
    chunk = chunk_rows or rows_per_chunk(batch, width, x_norm_BD.device)
    half_window = sae.cfg.bandwidth / 2
    threshold_F = sae.threshold_F
    codes_BF = ws.get("codes", (batch, width), x_norm_BD)
    recon_norm_BD = ws.get("recon", x_norm_BD.shape, x_norm_BD)
    diff_BD = ws.get("diff", x_norm_BD.shape, x_norm_BD)
    g_recon_BD = ws.get("g_recon", x_norm_BD.shape, x_norm_BD)
    scratch_CF = ws.get("pre", (chunk, width), x_norm_BD)  # pre, then H(pre − θ), then θ's per-entry terms
    gap_CF = ws.get("gap", (chunk, width), x_norm_BD)
    g_codes_CF = ws.get("g_pre", (chunk, width), x_norm_BD)  # dL/dz, then dL/dpre
    ones_B = ws.ones(batch, x_norm_BD)
    l0_term = x_norm_BD.new_full((), l0_weight / batch)  # dL/dH_bf of the L0 term
    x_aug_BE, encoder_EF = _augmented_encoder(sae, ws, x_norm_BD)
    grad_W_dec, grad_encoder_EF, fire_counts_F, g_recon_sum_D = _dense_grad_buffers(sae, ws, x_norm_BD)
    window_sums_F = ws.get("window_sums", (width,), x_norm_BD)  # Σ_b over the window of θ's per-entry terms
    recon_grad_scale = 2.0 / x_norm_BD.numel()
    squared_error = x_norm_BD.new_zeros(())
    for block, start in enumerate(range(0, batch, chunk)):
        rows = slice(start, min(start + chunk, batch))
        n, beta = rows.stop - rows.start, 0 if block == 0 else 1  # beta 0: the first block overwrites
        ones_C = ones_B[:n]
        pre_CF = torch.mm(x_aug_BE[rows], encoder_EF, out=scratch_CF[:n])
        gap = torch.sub(pre_CF, threshold_F, out=gap_CF[:n])
        # pre where gap > 0, else 0
        z_CF = torch.ops.aten.threshold_backward.grad_input(pre_CF, gap, 0.0, grad_input=codes_BF[rows])
        fire_CF = torch.sign(z_CF, out=pre_CF)
        torch.addmv(fire_counts_F, fire_CF.T, ones_C, beta=beta, out=fire_counts_F)
        recon_CD = torch.addmm(sae.b_dec_D, z_CF, sae.W_dec_FD, out=recon_norm_BD[rows])
        diff_CD = torch.sub(recon_CD, x_norm_BD[rows], out=diff_BD[rows])
        squared_error += torch.dot(diff_CD.view(-1), diff_CD.view(-1))
        g_CD = torch.mul(diff_CD, recon_grad_scale, out=g_recon_BD[rows])
        torch.addmm(grad_W_dec, z_CF.T, g_CD, beta=beta, out=grad_W_dec)
        torch.addmv(g_recon_sum_D, g_CD.T, ones_C, beta=beta, out=g_recon_sum_D)
        g_codes = torch.mm(g_CD, sae.W_dec_FD.T, out=g_codes_CF[:n])
        # θ: θ_f · dL/dz_bf + l0_weight / B on the kernel's window (−ε/2 < gap < ε/2, strict as _kernel's)
        ste_CF = torch.addcmul(l0_term, g_codes, threshold_F, out=scratch_CF[:n])
        torch.ops.aten.hardtanh_backward.grad_input(ste_CF, gap, -half_window, half_window, grad_input=ste_CF)
        torch.addmv(window_sums_F, ste_CF.T, ones_C, beta=beta, out=window_sums_F)
        g_pre = torch.ops.aten.threshold_backward.grad_input(g_codes, gap, 0.0, grad_input=g_codes)  # × H(pre − θ)
        torch.addmm(grad_encoder_EF, x_aug_BE[rows].T, g_pre, beta=beta, out=grad_encoder_EF)
    sae.W_dec_FD.grad = grad_W_dec
    _set_encoder_grads(sae, grad_encoder_EF[:d_in], grad_encoder_EF[d_in], g_recon_sum_D)
    threshold_param_F = sae.threshold_param_F
    grad_threshold_F = torch.mul(window_sums_F, -1.0 / sae.cfg.bandwidth, out=ws.like(threshold_param_F))
    threshold_param_F.grad = grad_threshold_F.masked_fill_(threshold_param_F < 0, 0.0)  # clamp_min(0)'s derivative
    mse = squared_error / x_norm_BD.numel()
    l0 = fire_counts_F.sum() / batch
    losses = {"mse": mse, "l0": l0, "total": mse + l0_weight * l0}
    raw_error = squared_error if sae.cfg.normalize == "none" else None  # else the normalised space's
    return SAEOutput(recon=sae.denormalize(recon_norm_BD), codes_BF=codes_BF, losses=losses, fired_F=fire_counts_F > 0,
                     l0=l0, squared_error=raw_error)


SAMPLE_STRIDE = 16  # BatchTopK on CPU: one pre-activation in about this many bounds the kept values from below
MIN_SAMPLED_VALUES = 1 << 16  # below this many pre-activations a selection over all of them is as cheap


def _top_lower_bound(flat: Tensor, count: int, width: int) -> Tensor | None:
    """A value below the `count`-th largest of `flat` (probably) that few more than `count` values exceed:
    the matching order statistic of a strided sample, lowered by 4 binomial standard deviations. The stride
    is coprime with `width` (the rows' length), so the sample visits every latent, not every 16th one. None
    when the sample would be too small to help (then every value is a candidate)."""
    stride = SAMPLE_STRIDE
    while math.gcd(stride, width) != 1:
        stride += 1
    sample = flat[::stride]
    expected = count / stride  # sampled values among the count largest
    rank = math.ceil(expected + 4 * math.sqrt(expected)) + 1
    if flat.numel() < MIN_SAMPLED_VALUES or rank >= sample.numel():
        return None
    return sample.kthvalue(sample.numel() - rank + 1).values  # the rank-th largest sampled value


def top_entries_by_topk(flat: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """(indices of the `count` largest values of `flat`, in increasing order; ReLU of those values): a
    fixed-size selection, so no host sync. Codes may be 0 (where fewer than `count` values are > 0)."""
    values, index = flat.topk(count, sorted=False)
    index, order = index.sort()
    return index, values[order].relu_()


def batch_top_entries(pre_BF: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """BatchTopK's kept entries: (flat indices into pre_BF, in increasing order (row-major), their codes), the
    codes being ReLU of the `count` largest pre-activations of the whole batch (`keep_batch_top_k`).

    On an accelerator: `top_entries_by_topk` (codes may be 0 there). On CPU, where `topk` over a whole
    B × F batch runs on one thread and takes several GEMMs' time: the values above a sampled lower bound
    (`_top_lower_bound`) are the candidates, the `count`-th largest of those is the cut, and only entries
    > 0 are returned (the others' codes are 0: they add nothing to any sum and ReLU gives them no gradient).
    Of several values equal to a positive cut, the first in row-major order are kept (torch.topk leaves
    the choice unspecified)."""
    flat = pre_BF.reshape(-1)
    count = min(count, flat.numel())
    if flat.device.type != "cpu":
        return top_entries_by_topk(flat, count)
    bound = _top_lower_bound(flat, count, pre_BF.shape[-1])
    candidates = None if bound is None else (flat > bound).nonzero().squeeze(1)
    if candidates is not None and candidates.numel() < count:  # the sample's bound was too high: rare
        candidates = None
    values = flat if candidates is None else flat[candidates]
    cut = values.kthvalue(values.numel() - count + 1).values  # the count-th largest
    if cut > 0:
        keep = values > cut
        ties = (values == cut).nonzero().squeeze(1)
        keep[ties[: count - int(keep.sum())]] = True
    else:  # fewer than count values are > 0: every positive one is kept
        keep = values > 0
    index = keep.nonzero().squeeze(1)
    if candidates is not None:
        index = candidates[index]
    return index, flat[index]


def _offsets(sorted_keys: Tensor, groups: int) -> Tensor:
    """Where each of the groups 0 .. groups−1 starts in `sorted_keys` (embedding_bag's offsets; no host sync)."""
    return torch.searchsorted(sorted_keys, torch.arange(groups, device=sorted_keys.device))


# CPU: AuxK runs as GEMMs over the M dead columns while M <= this x aux_k, else on aux_k entries per example
# (one thread, batch 4096, d_in 768, aux_k 384, CPU seconds per step, GEMMs / entries: M 1000: 1.66 / 1.95,
# M 1500: 1.85 / 2.01, M 2000: 1.97 / 1.95, M 3000: 2.30 / 2.02, M 4000: 2.52 / 2.09)
DENSE_AUXK_FACTOR = 4


class AuxKCodes(NamedTuple):
    """AuxK's codes, B × m: either entries, `latents_BM[b, j]` being the latent of `codes_BM[b, j]` (`dense` False),
    or dense over the columns `latents_BM` (a vector [m], the dead latents: the same for every example)."""
    latents_BM: Tensor
    codes_BM: Tensor
    dense: bool


def auxk_entries(pre_BF: Tensor, dead_F: Tensor, aux_k: int, fixed_size: bool | None = None,
                 dense_factor: float | None = None) -> AuxKCodes | None:
    """AuxK's codes (TopKSAE.auxiliary_losses): per example, ReLU of the `aux_k` largest pre-activations among
    the dead latents; on CPU None when no latent is dead (on an accelerator all-zero codes then, and the caller's
    `dead_F.any()` gate makes AuxK 0).

    On an accelerator (`fixed_size`, default: not on CPU) the live latents are masked to -inf and each example
    gets aux_k entries (a fixed-size selection, no host sync), so some codes may be 0. On CPU only the M dead
    columns are read (the reference's picks beyond the M dead latents are -inf, i.e. codes 0). There, while
    M <= `dense_factor` (default DENSE_AUXK_FACTOR) x aux_k, the codes are dense B × M over the dead columns
    (zeros beyond each example's top aux_k): AuxK's decoder and gradients are then GEMMs over those columns,
    several times faster per multiply than gathering entries; beyond it, aux_k entries per example."""
    if fixed_size if fixed_size is not None else pre_BF.device.type != "cpu":
        values, latents = pre_BF.masked_fill(~dead_F, float("-inf")).topk(aux_k, dim=-1, sorted=False)
        return AuxKCodes(latents, values.relu_(), dense=False)
    dead = dead_F.nonzero().squeeze(1)
    if dead.numel() == 0:
        return None
    dead_pre_BM = pre_BF.index_select(1, dead)
    dense = dead.numel() <= (DENSE_AUXK_FACTOR if dense_factor is None else dense_factor) * aux_k
    if dead.numel() <= aux_k:  # every dead latent is picked
        return AuxKCodes(dead if dense else dead.expand(pre_BF.shape[0], -1), dead_pre_BM.relu_(), dense)
    values, position = dead_pre_BM.topk(aux_k, dim=-1, sorted=False)
    if dense:
        return AuxKCodes(dead, dead_pre_BM.zero_().scatter_(-1, position, values.relu_()), dense=True)
    return AuxKCodes(dead[position], values.relu_(), dense=False)


def _fixed_groups(batch: int, per_row: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(offsets [B], rows [B·per_row]) of entries laid out row by row, `per_row` to an example (TopK's k, AuxK's m)."""
    offsets_B = torch.arange(0, batch * per_row, per_row, device=device)
    return offsets_B, torch.arange(batch, device=device).unsqueeze(1).expand(batch, per_row).contiguous().view(-1)


def _entry_dots(g_BD: Tensor, W_dec_FD: Tensor, latents_E: Tensor, offsets_B: Tensor, rows_E: Tensor) -> Tensor:
    """[E]: W_dec[latents_E[i]] · g[rows_E[i]] for entries grouped by row (`offsets_B`): the gradient of an
    embedding_bag's per-sample weights, by its own kernel (one dot per entry; mode 0 is "sum")."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        g_BD, W_dec_FD, latents_E, offsets_B, rows_E, 0, -1)


TRANSPOSE_BLOCK = 256  # latents per block of `_transposed_copy` (a 256 x d_in block stays in a core's L2 cache)


def _transposed_copy(out_DF: Tensor, src_FD: Tensor) -> Tensor:
    """out = srcᵀ, copied in blocks of latents: on CPU a whole-matrix transposing copy_ strides through memory
    (3x slower at 16,384 x 768); an accelerator takes it whole."""
    if out_DF.device.type != "cpu":
        return out_DF.copy_(src_FD.T)
    for start in range(0, src_FD.shape[0], TRANSPOSE_BLOCK):
        out_DF[:, start:start + TRANSPOSE_BLOCK].copy_(src_FD[start:start + TRANSPOSE_BLOCK].T)
    return out_DF


def _entries_loss_and_grads(sae, ws: Workspace, x_norm_BD: Tensor, x_aug_BE: Tensor, latents_E: Tensor,
                            rows_E: Tensor, row_offsets_B: Tensor, codes_E: Tensor, aux_codes: AuxKCodes | None,
                            dead_F: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The part of a TopK or BatchTopK step after the selection, on the kept entries (b_i, f_i, z_i) alone
    (grouped by example: `rows_E` non-decreasing, `row_offsets_B` where each example starts) and AuxK's codes
    (`auxk_entries`, or None): the reconstruction, the mse and AuxK losses, and every parameter's `.grad`
    (see `topk_loss_and_grads`). Returns (recon_norm_BD, mse, aux, firing_E), firing_E being 1 where an
    entry's code is > 0, else 0 (ReLU's derivative).

    Non-finite weights give a non-finite mse as `forward`'s dense decoder does (0 · NaN is NaN there): the
    decoder rows no entry reads are added in as 0 · Σ W_dec (a sum, no host sync)."""
    (batch, d_in), width = x_norm_BD.shape, sae.d_sae
    W_dec_FD = sae.W_dec_FD
    recon_norm_BD = F.embedding_bag(latents_E, W_dec_FD, row_offsets_B, mode="sum",
                                    per_sample_weights=codes_E).add_(sae.b_dec_D)
    # contiguous whatever the input's layout (its .view(-1) below)
    residual_BD = torch.sub(x_norm_BD, recon_norm_BD).contiguous() if aux_codes is not None else None
    mse, g_recon_BD = _mse_and_recon_grad(ws, recon_norm_BD, x_norm_BD)
    mse = mse + 0 * W_dec_FD.sum()  # NaN anywhere in W_dec shows in the loss, as in forward
    firing_E = codes_E.sign()  # codes are >= 0: 1 where the entry fired (ReLU's derivative), else 0
    g_codes_E = _entry_dots(g_recon_BD, W_dec_FD, latents_E, row_offsets_B, rows_E).mul_(firing_E)
    aux = mse.new_zeros(())
    latents, dec_rows, enc_rows = latents_E, rows_E, rows_E  # every entry: its latent, table rows, weights
    dec_table, dec_weights, enc_weights = g_recon_BD, codes_E, g_codes_E
    dense_aux = None  # AuxK over dense dead columns: (the columns, their codes B × M, dL/dcodes B × M, g_aux)
    if aux_codes is not None:
        if aux_codes.dense:
            dead_M, aux_codes_BM = aux_codes.latents_BM, aux_codes.codes_BM
            W_dead_MD = W_dec_FD.index_select(0, dead_M)
            error_BD = torch.mm(aux_codes_BM, W_dead_MD).sub_(residual_BD)
        else:
            aux_latents_A, aux_codes_A = aux_codes.latents_BM.reshape(-1).contiguous(), aux_codes.codes_BM.reshape(-1)
            aux_offsets_B, aux_rows_A = _fixed_groups(batch, aux_codes.latents_BM.shape[1], x_norm_BD.device)
            error_BD = F.embedding_bag(aux_latents_A, W_dec_FD, aux_offsets_B, mode="sum",
                                       per_sample_weights=aux_codes_A).sub_(residual_BD)
        residual_norm = torch.dot(residual_BD.view(-1), residual_BD.view(-1)).clamp_min(1e-12)
        # gated as TopKSAE.auxiliary_losses is: the fixed-size selection yields a (gradient-free) aux of 1 when
        # no latent is dead after all (the trainer's any_dead hint is refreshed every few steps on accelerators)
        aux = torch.dot(error_BD.view(-1), error_BD.view(-1)) / residual_norm * dead_F.any()
        g_aux_BD = error_BD.mul_(2 * sae.cfg.aux_coefficient / residual_norm)
        if aux_codes.dense:
            g_aux_codes_BM = torch.mm(g_aux_BD, W_dead_MD.T).mul_(aux_codes_BM.sign())  # × ReLU's derivative
            dense_aux = (dead_M, aux_codes_BM, g_aux_codes_BM, g_aux_BD)
        else:
            g_aux_A = _entry_dots(g_aux_BD, W_dec_FD, aux_latents_A, aux_offsets_B, aux_rows_A)
            g_aux_A.mul_(aux_codes_A.sign())  # ReLU's derivative
            latents = torch.cat([latents_E, aux_latents_A])
            dec_rows, enc_rows = torch.cat([rows_E, aux_rows_A + batch]), torch.cat([rows_E, aux_rows_A])
            dec_table = torch.cat([g_recon_BD, g_aux_BD])  # AuxK's rows follow the main ones
            dec_weights, enc_weights = torch.cat([codes_E, aux_codes_A]), torch.cat([g_codes_E, g_aux_A])
    by_latent_F, order = latents.sort(stable=True)
    latent_offsets_F = _offsets(by_latent_F, width)
    grad_W_dec = F.embedding_bag(dec_rows[order], dec_table, latent_offsets_F, mode="sum",
                                 per_sample_weights=dec_weights[order])
    grad_encoder_FE = F.embedding_bag(enc_rows[order], x_aug_BE, latent_offsets_F, mode="sum",
                                      per_sample_weights=enc_weights[order])  # rows: latents; last column: b_enc's
    if dense_aux is not None:  # the dead rows' AuxK terms, by GEMM
        dead_M, aux_codes_BM, g_aux_codes_BM, g_aux_BD = dense_aux
        grad_W_dec.index_add_(0, dead_M, torch.mm(aux_codes_BM.T, g_aux_BD))
        grad_encoder_FE.index_add_(0, dead_M, torch.mm(g_aux_codes_BM.T, x_aug_BE))
    W_dec_FD.grad = grad_W_dec
    grad_W_enc = _transposed_copy(ws.like(sae.W_enc_DF), grad_encoder_FE[:, :d_in])
    g_pre_sum_F = ws.like(sae.b_enc_F).copy_(grad_encoder_FE[:, d_in])
    _set_encoder_grads(sae, grad_W_enc, g_pre_sum_F, torch.mv(g_recon_BD.T, ws.ones(batch, x_norm_BD)))
    return recon_norm_BD, mse, aux, firing_E


def _entries_output(sae, x_norm_BD: Tensor, recon_norm_BD: Tensor, codes_BF: Tensor, mse: Tensor, aux: Tensor,
                    latents_E: Tensor, firing_E: Tensor) -> SAEOutput:
    """The step's SAEOutput: which latents fired and L0 counted from the kept entries' firing (codes > 0)."""
    fire_counts_F = firing_E.new_zeros(sae.d_sae).index_add_(0, latents_E, firing_E)
    losses = {"mse": mse, "aux": aux, "total": mse + sae.cfg.aux_coefficient * aux}
    return SAEOutput(recon=sae.denormalize(recon_norm_BD), codes_BF=codes_BF, losses=losses,
                     fired_F=fire_counts_F > 0, l0=firing_E.sum() / x_norm_BD.shape[0])


class EntriesEncoding(NamedTuple):
    """What a TopK or BatchTopK step has after its one dense GEMM (`_encode_for_entries`)."""
    ws: Workspace
    x_norm_BD: Tensor
    x_aug_BE: Tensor  # [x | 1]
    encoder_EF: Tensor  # [W_enc; b_enc − W_encᵀ b_dec]
    pre_BF: Tensor  # pre-activations, in the workspace's "codes" buffer
    aux_codes: AuxKCodes | None


def _encode_for_entries(sae, x_BD: Tensor, dead_F: Tensor | None, aux_k: int | None) -> EntriesEncoding:
    """The encoder GEMM of a TopK or BatchTopK step, and AuxK's codes when `dead_F` is given (`aux_k` None: the
    SAE's own)."""
    ws = workspace(sae)
    x_norm_BD = sae.normalize(x_BD)
    x_aug_BE, encoder_EF = _augmented_encoder(sae, ws, x_norm_BD)
    pre_BF = torch.mm(x_aug_BE, encoder_EF, out=ws.get("codes", (x_norm_BD.shape[0], sae.d_sae), x_norm_BD))
    aux_k = sae.aux_k if aux_k is None else aux_k
    aux_codes = auxk_entries(pre_BF, dead_F, aux_k) if dead_F is not None else None
    return EntriesEncoding(ws, x_norm_BD, x_aug_BE, encoder_EF, pre_BF, aux_codes)


@torch.no_grad()
def topk_loss_and_grads(sae, x_BD: Tensor, k: int, dead_F: Tensor | None = None,
                        aux_k: int | None = None) -> SAEOutput:
    """mse + aux_coefficient · AuxK of a TopK SAE (sae/topk.py): codes are ReLU of each example's k largest
    pre-activations (B × F), pre = x W_enc + b_enc − W_encᵀ b_dec. AuxK (Gao et al. 2024, as
    TopKSAE.auxiliary_losses): with `dead_F` (bool per latent; None or none dead: AuxK is 0), the top `aux_k`
    (None: the SAE's own `aux_k`) dead latents per example (`auxk_entries`) reconstruct the detached residual
    r = x − recon without b_dec, aux = ‖ê − r‖² / max(‖r‖², 1e-12).

    After the encoder GEMM the step reads only the k·B kept entries (b_i, f_i, z_i), k to an example (torch.topk:
    a fixed-size selection, no host sync; codes may be 0 where fewer than k pre-activations are > 0), and AuxK's
    B·m entries (on CPU while few latents are dead, AuxK's B × M codes over the M dead columns, by GEMMs):
        recon_b = b_dec + Σ_{i: b_i = b} z_i W_dec[f_i]          embedding_bag over W_dec's rows, grouped by example
        dL/dz_i = W_dec[f_i] · g_{b_i}   (g = dL/drecon)         one dot per entry (embedding_bag's own backward)
        dL/dW_dec[f] = Σ_{i: f_i = f} z_i g_{b_i}                embedding_bag over g's rows, grouped by latent
        dL/d[W_enc; b_enc'][:, f] = Σ_{i: f_i = f} dL/dz_i [x_{b_i} | 1]   the same over the rows of [x | 1]
    (ReLU' is 1 on entries with z_i > 0 and 0 on the rest; AuxK's entries join the same two sums, with
    g_aux = 2 aux_coefficient (ê − r) / max(‖r‖², 1e-12) for g), so beyond the encoder GEMM the work is
    O((k + m) · B · d_in), not four more B × d_in × F GEMMs (`_entries_loss_and_grads`, shared with BatchTopK).
    NaN pre-activations are the largest values to torch.topk, as in `forward`, so non-finite inputs or encoder
    weights give a non-finite loss (non-finite decoder rows too, through a 0 · Σ W_dec term). The dense codes
    (`codes_BF`) reuse pre's memory."""
    ws, x_norm_BD, x_aug_BE, _, pre_BF, aux_codes = _encode_for_entries(sae, x_BD, dead_F, aux_k)
    batch = x_norm_BD.shape[0]
    values_BK, latents_BK = pre_BF.topk(k, dim=-1, sorted=False)
    codes_BK = values_BK.relu_()
    latents_E, codes_E = latents_BK.view(-1), codes_BK.view(-1)
    row_offsets_B, rows_E = _fixed_groups(batch, k, pre_BF.device)
    recon_norm_BD, mse, aux, firing_E = _entries_loss_and_grads(
        sae, ws, x_norm_BD, x_aug_BE, latents_E, rows_E, row_offsets_B, codes_E, aux_codes, dead_F)
    codes_BF = pre_BF.zero_().scatter_(-1, latents_BK, codes_BK)
    return _entries_output(sae, x_norm_BD, recon_norm_BD, codes_BF, mse, aux, latents_E, firing_E)


@torch.no_grad()
def batchtopk_loss_and_grads(sae, x_BD: Tensor, k: int, dead_F: Tensor | None = None,
                             aux_k: int | None = None) -> SAEOutput:
    """mse + aux_coefficient · AuxK of a BatchTopK SAE in training (sae/batchtopk.py): codes are ReLU of the k·B
    largest pre-activations of the batch (B × F), pre = x W_enc + b_enc − W_encᵀ b_dec; AuxK as TopK's
    (`topk_loss_and_grads`). The kept entries, E ≤ k·B of them, are any number to an example
    (`batch_top_entries`); the rest of the step is TopK's (`_entries_loss_and_grads`)."""
    ws, x_norm_BD, x_aug_BE, encoder_EF, pre_BF, aux_codes = _encode_for_entries(sae, x_BD, dead_F, aux_k)
    batch, width = x_norm_BD.shape[0], sae.d_sae
    if pre_BF.device.type == "cpu" and not torch.isfinite(x_aug_BE.sum() + encoder_EF.sum()):
        # a diverging run: NaN pre-activations are the largest values to torch.topk, as in `forward` (so the loss
        # turns NaN and the trainer stops), where the CPU's sampled selection would pass over them
        flat_E, codes_E = top_entries_by_topk(pre_BF.view(-1), min(k * batch, pre_BF.numel()))
    else:
        flat_E, codes_E = batch_top_entries(pre_BF, k * batch)
    rows_E = torch.div(flat_E, width, rounding_mode="floor")
    latents_E = flat_E - rows_E * width
    recon_norm_BD, mse, aux, firing_E = _entries_loss_and_grads(
        sae, ws, x_norm_BD, x_aug_BE, latents_E, rows_E, _offsets(rows_E, batch), codes_E, aux_codes, dead_F)
    codes_BF = pre_BF.view(-1).zero_().scatter_(0, flat_E, codes_E).view(batch, width)
    return _entries_output(sae, x_norm_BD, recon_norm_BD, codes_BF, mse, aux, latents_E, firing_E)
