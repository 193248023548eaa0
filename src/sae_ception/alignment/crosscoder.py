"""Two-model acausal crosscoder (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model
Diffing"): one dictionary of F latents read from both models' activations and written back to both,

    pre_BF = x_a_BD @ W_enc_a_DF + x_b_BE @ W_enc_b_EF + b_enc_F
    x̂_a = z_BF @ W_dec_a_FD + b_dec_a_D,    x̂_b = z_BF @ W_dec_b_FE + b_dec_b_E

so each latent j has one decoder row per model, and the pair of norms (||d_a,j||, ||d_b,j||) says which model
it belongs to. Two sparsities: "l1" (Anthropic's: ReLU + L1 on activations weighted by the SUM of the decoder
norms) and "batchtopk" (Minder et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to Interpret
Chat-Tuning": the k·B largest decoder-norm-weighted activations of the batch survive, and at inference one
threshold estimated when training ends, as in `sae/batchtopk.py`; the L1 form invents model-exclusive latents,
BatchTopK largely does not).

Units: each model's activations are divided by one scalar (`scale_a`, `scale_b`, set by `fit_scales_` so the
mean row L2 norm is 1 on the training rows); the weights live in that normalised space, `encode`/`decode`/
`translate` take and return raw units, `loss` reports normalised-space numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.sae.base import fit_sample
from sae_ception.sae.batchtopk import THRESHOLD_CHUNK_VALUES, keep_batch_top_k, top_count_threshold

SPARSITIES = ("l1", "batchtopk")
INIT_DECODER_NORM = 0.1  # each decoder row starts as a random direction of this norm (per model)
STATS_ROWS = 4096  # rows per chunk when reading the whole training set (scales, statistics)


class Crosscoder(nn.Module):
    """Shared dictionary of `d_latent` latents over model A (width `d_a`) and model B (width `d_b`).

    Init (Anthropic's): decoder rows are random directions of norm `INIT_DECODER_NORM` (0.1) in each model's
    space, each encoder is its decoder's transpose, biases are 0; `generator` makes it reproducible.
    Buffers: `scale_a`, `scale_b` (1.0 until `fit_scales_`), `threshold` (BatchTopK's inference threshold on
    decoder-norm-weighted activations; -1 until estimated, and inference is then plain ReLU).
    Raises ConfigError for an unknown `sparsity` or a missing / out-of-range `k` with "batchtopk".
    """

    def __init__(self, d_a: int, d_b: int, d_latent: int, sparsity: str, k: Optional[int] = None, *,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        _check_sparsity(sparsity, k, d_latent)
        self.d_a, self.d_b, self.d_latent, self.sparsity, self.k = d_a, d_b, d_latent, sparsity, k
        self.W_dec_a_FD = nn.Parameter(_random_rows(d_latent, d_a, generator))
        self.W_dec_b_FE = nn.Parameter(_random_rows(d_latent, d_b, generator))
        self.W_enc_a_DF = nn.Parameter(self.W_dec_a_FD.detach().t().clone())
        self.W_enc_b_EF = nn.Parameter(self.W_dec_b_FE.detach().t().clone())
        self.b_enc_F = nn.Parameter(torch.zeros(d_latent))
        self.b_dec_a_D = nn.Parameter(torch.zeros(d_a))
        self.b_dec_b_E = nn.Parameter(torch.zeros(d_b))
        self.register_buffer("scale_a", torch.tensor(1.0))
        self.register_buffer("scale_b", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(-1.0))

    @torch.no_grad()
    def fit_scales_(self, x_a_ND: Tensor, x_b_NE: Tensor) -> None:
        """Set `scale_a`, `scale_b` to each model's mean row L2 norm over the rows given (raw units), read in
        chunks, so the normalised rows have mean norm 1 ("each model's activations normalised to the same mean
        norm", Lindsey et al.). Raises DivergenceError if a model's activations hold NaN/inf, ValueError if
        they are all zero or empty."""
        for name, x, scale in (("A", x_a_ND, self.scale_a), ("B", x_b_NE, self.scale_b)):
            total = sum(float(chunk.float().norm(dim=-1).double().sum()) for chunk in x.split(STATS_ROWS))
            mean = total / max(len(x), 1)
            if not math.isfinite(mean):
                raise DivergenceError(f"crosscoder inputs: model {name}'s activations hold NaN or inf")
            if mean <= 0:
                raise ValueError(f"crosscoder inputs: model {name}'s activations are empty or all zero")
            scale.fill_(mean)

    @torch.no_grad()
    def fit_decoder_bias_(self, x_a_ND: Tensor, x_b_NE: Tensor) -> None:
        """Start each side's decoder bias at its mean row (normalised units), read in chunks (call after
        `fit_scales_`)."""
        for x, bias, scale in ((x_a_ND, self.b_dec_a_D, self.scale_a), (x_b_NE, self.b_dec_b_E, self.scale_b)):
            total = sum(chunk.double().sum(0) for chunk in x.split(STATS_ROWS))
            bias.copy_((total / max(len(x), 1) / float(scale)).float())

    def decoder_norms(self) -> Tensor:
        """(F, 2): ||W_dec_a[j]||, ||W_dec_b[j]|| for each latent j, in normalised space (differentiable)."""
        return torch.stack([self.W_dec_a_FD.norm(dim=-1), self.W_dec_b_FE.norm(dim=-1)], dim=-1)

    def _pre(self, xn_a_BD: Optional[Tensor], xn_b_BE: Optional[Tensor]) -> Tensor:
        # each side is read relative to its decoder bias (the SAE's pre-encoder bias, Bricken et al. 2023), which
        # starts at the side's mean: on non-negative, uncentred activations the raw mean direction otherwise wins
        # every top-k and most latents never fire
        terms = [(x - b) @ W for x, b, W in ((xn_a_BD, self.b_dec_a_D, self.W_enc_a_DF),
                                             (xn_b_BE, self.b_dec_b_E, self.W_enc_b_EF)) if x is not None]
        if not terms:
            raise ValueError("crosscoder encode needs at least one model's activations")
        return sum(terms) + self.b_enc_F

    def _activate(self, pre_BF: Tensor, inference: bool) -> Tensor:
        acts_BF = F.relu(pre_BF)
        if self.sparsity == "l1":
            return acts_BF
        weighted_BF = acts_BF * self.decoder_norms().sum(-1)
        if inference:
            keep_BF = weighted_BF > self.threshold.clamp_min(0)
        else:
            keep_BF = keep_batch_top_k(weighted_BF, self.k) > 0
        return acts_BF * keep_BF.to(acts_BF.dtype)

    def _decode_normed(self, z_BF: Tensor) -> tuple[Tensor, Tensor]:
        return z_BF @ self.W_dec_a_FD + self.b_dec_a_D, z_BF @ self.W_dec_b_FE + self.b_dec_b_E

    def encode(self, x_a_BD: Optional[Tensor], x_b_BE: Optional[Tensor]) -> Tensor:
        """Code z (B, F) of raw-unit activations x_a (B, d_a) and x_b (B, d_b). Either side may be None: its
        encoder term is left out (one-sided encoding, as `translate` uses). Training mode: BatchTopK over the
        batch; eval mode: the fixed threshold (BatchTopK) or ReLU (L1). Raises ValueError if both are None."""
        xn_a = None if x_a_BD is None else x_a_BD / self.scale_a
        xn_b = None if x_b_BE is None else x_b_BE / self.scale_b
        return self._activate(self._pre(xn_a, xn_b), inference=not self.training)

    def decode(self, z_BF: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_a (B, d_a), x̂_b (B, d_b)) in raw units from codes z (B, F)."""
        xn_a, xn_b = self._decode_normed(z_BF)
        return xn_a * self.scale_a, xn_b * self.scale_b

    def loss(self, x_a_BD: Tensor, x_b_BE: Tensor, l1_coefficient: float = 0.0) -> dict[str, Tensor]:
        """Training objective on paired raw-unit rows, computed in normalised space. "mse_a"/"mse_b": mean over
        rows of ||x_m − x̂_m||² (summed over dimensions, not averaged); "sparsity": mean over rows of
        Σ_j z_j·(||d_a,j|| + ||d_b,j||) for "l1" (Lindsey et al.'s penalty on the sum of decoder norms), 0 for
        "batchtopk"; "loss" = mse_a + mse_b + l1_coefficient·sparsity; "l0": mean non-zero latents per row."""
        xn_a, xn_b = x_a_BD / self.scale_a, x_b_BE / self.scale_b
        z_BF = self._activate(self._pre(xn_a, xn_b), inference=not self.training)
        rec_a, rec_b = self._decode_normed(z_BF)
        mse_a = (xn_a - rec_a).pow(2).sum(-1).mean()
        mse_b = (xn_b - rec_b).pow(2).sum(-1).mean()
        if self.sparsity == "l1":
            sparsity = (z_BF * self.decoder_norms().sum(-1)).sum(-1).mean()
        else:
            sparsity = z_BF.new_zeros(())
        return {"loss": mse_a + mse_b + l1_coefficient * sparsity, "mse_a": mse_a, "mse_b": mse_b,
                "sparsity": sparsity, "l0": (z_BF != 0).float().sum(-1).mean()}

    @torch.no_grad()
    def translate(self, x_a_BD: Tensor, direction: str = "a_to_b") -> Tensor:
        """Predict one model's activations from the other's, raw units: encode the source side alone (the other
        encoder's term left out), decode the target side. `x_a_BD` is the SOURCE: A's rows (B, d_a) for
        "a_to_b", B's rows (B, d_b) for "b_to_a". Always the inference code (threshold for BatchTopK), whatever
        the mode. A one-sided pre-activation lacks the other model's term (a shared latent's is about halved)
        while the threshold was set on two-sided ones, so expect a translation FVU well above the reconstruction
        FVU (planted test: 0.55-0.70, B-only features leaving ~0.33 unexplainable). Raises ValueError for another
        `direction`."""
        if direction not in ("a_to_b", "b_to_a"):
            raise ValueError(f"crosscoder translate direction={direction!r}: use 'a_to_b' or 'b_to_a'")
        a_to_b = direction == "a_to_b"
        pre = self._pre(x_a_BD / self.scale_a, None) if a_to_b else self._pre(None, x_a_BD / self.scale_b)
        rec_a, rec_b = self.decode(self._activate(pre, inference=True))
        return rec_b if a_to_b else rec_a

    @torch.no_grad()
    def finish_training_(self, x_a_ND: Tensor, x_b_NE: Tensor) -> None:
        """BatchTopK only: set `threshold` so that k·S of the decoder-norm-weighted activations of the S rows of
        `fit_sample` (all rows, or a fixed-seed sample) lie above it (`top_count_threshold`), i.e. BatchTopK
        with the training rows as one batch: inference L0 on them is k."""
        if self.sparsity != "batchtopk":
            return
        x_a, x_b = fit_sample(x_a_ND), fit_sample(x_b_NE)  # same N, same seed: the same rows
        norms_F = self.decoder_norms().sum(-1)
        rows = max(1, THRESHOLD_CHUNK_VALUES // self.d_latent)
        pairs = _paired(x_a, x_b, rows, norms_F.device)
        chunks = (F.relu(self._pre(a / self.scale_a, b / self.scale_b)) * norms_F for a, b in pairs)
        self.threshold.fill_(top_count_threshold(chunks, self.k * len(x_a)))


def _check_sparsity(sparsity: str, k: Optional[int], d_latent: int) -> None:
    if sparsity not in SPARSITIES:
        raise ConfigError(f"crosscoder sparsity={sparsity!r}: choose one of {', '.join(SPARSITIES)}")
    if sparsity == "batchtopk" and (k is None or not 1 <= k <= d_latent):
        raise ConfigError(f"crosscoder k={k}: batchtopk needs 1 <= k <= d_latent={d_latent}")


def _random_rows(rows: int, cols: int, generator: Optional[torch.Generator]) -> Tensor:
    W = torch.randn(rows, cols, generator=generator)
    return W * (INIT_DECODER_NORM / W.norm(dim=-1, keepdim=True))


def _paired(x_a_ND: Tensor, x_b_NE: Tensor, rows: int, device) -> Iterator[tuple[Tensor, Tensor]]:
    for a, b in zip(x_a_ND.split(rows), x_b_NE.split(rows)):
        yield a.to(device).float(), b.to(device).float()


@dataclass
class CrosscoderTraining:
    """Settings of `train_crosscoder` (plain; the Hydra schema is built elsewhere)."""

    d_latent: int  # latents in the shared dictionary (F)
    sparsity: str  # one of SPARSITIES
    k: Optional[int] = None  # BatchTopK's mean active latents per row (required for "batchtopk")
    # L1 weight on Σ_j z_j(||d_a,j|| + ||d_b,j||). With unit-mean-norm inputs the summed MSE is O(1) (2 when
    # nothing is reconstructed) whatever the models' widths, so one value transfers across models (the mapping's
    # YAML, configs/mapping/crosscoder_l1.yaml, sets its own).
    l1_coefficient: float = 3e-2
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3

    def __post_init__(self):
        _check_sparsity(self.sparsity, self.k, self.d_latent)
        for name in ("d_latent", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"crosscoder {name}={getattr(self, name)}: must be >= 1")
        if not self.lr > 0 or self.l1_coefficient < 0:
            raise ConfigError(f"crosscoder lr={self.lr:g}, l1_coefficient={self.l1_coefficient:g}: need lr > 0, "
                              "l1_coefficient >= 0")


def train_crosscoder(x_a_ND: Tensor, x_b_NE: Tensor, settings: CrosscoderTraining, seed: int,
                     device="cpu") -> tuple[Crosscoder, dict]:
    """Train a crosscoder on paired rows x_a (N, d_a), x_b (N, d_b) (raw units, any float dtype, any device;
    rows are gathered per batch, never copied whole) with Adam. Init and data order come from
    `torch.Generator().manual_seed(seed)`: two calls with one seed give bit-identical weights. Returns the
    model in eval mode (threshold set for BatchTopK) and stats: "steps", "epochs", "fvu_a", "fvu_b" (fraction
    of variance unexplained on the training rows, inference code), "l0" (mean active latents per row at
    inference), "dead_fraction" (latents that never fire on the training rows).
    Raises ValueError for unpaired / empty rows, DivergenceError for a non-finite input, loss or weight."""
    n = len(x_a_ND)
    if len(x_b_NE) != n or n == 0:
        raise ValueError(f"crosscoder needs paired, non-empty rows: A has {n}, B has {len(x_b_NE)}")
    gen = torch.Generator().manual_seed(seed)
    model = Crosscoder(x_a_ND.shape[1], x_b_NE.shape[1], settings.d_latent, settings.sparsity, settings.k,
                       generator=gen).to(device)
    model.fit_scales_(x_a_ND, x_b_NE)
    model.fit_decoder_bias_(x_a_ND, x_b_NE)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    step = 0
    model.train()
    for epoch in range(settings.epochs):
        for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
            out = model.loss(x_a_ND[idx.to(x_a_ND.device)].to(device).float(),
                             x_b_NE[idx.to(x_b_NE.device)].to(device).float(), settings.l1_coefficient)
            if not torch.isfinite(out["loss"]):
                raise DivergenceError(f"crosscoder lr={settings.lr:g}: training diverged at step {step} (epoch "
                                      f"{epoch}, loss {out['loss'].item()}); lower crosscoder lr")
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            step += 1
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise DivergenceError(f"crosscoder lr={settings.lr:g}: weights hold NaN or inf; lower crosscoder lr")
    model.eval()
    model.finish_training_(x_a_ND, x_b_NE)
    return model, {"steps": step, "epochs": settings.epochs, **_statistics(model, x_a_ND, x_b_NE)}


@torch.no_grad()
def _statistics(model: Crosscoder, x_a_ND: Tensor, x_b_NE: Tensor) -> dict:
    """FVU of each side, inference L0 and dead fraction over every training row, in chunks (float64 sums)."""
    device, n = model.b_enc_F.device, len(x_a_ND)
    err, sq = [0.0, 0.0], [0.0, 0.0]
    sums = [torch.zeros(model.d_a, dtype=torch.float64), torch.zeros(model.d_b, dtype=torch.float64)]
    active, fired = 0.0, torch.zeros(model.d_latent, dtype=torch.bool, device=device)
    for a, b in _paired(x_a_ND, x_b_NE, STATS_ROWS, device):
        z = model.encode(a, b)
        active += float((z != 0).sum())
        fired |= (z != 0).any(0)
        for m, (x, rec) in enumerate(zip((a, b), model.decode(z))):
            scale = model.scale_a if m == 0 else model.scale_b
            x, rec = x / scale, rec / scale
            err[m] += float((x - rec).double().pow(2).sum())
            sq[m] += float(x.double().pow(2).sum())
            sums[m] += x.double().sum(0).cpu()
    total = [sq[m] - float(sums[m].pow(2).sum()) / n for m in range(2)]  # Σ||x − mean||²
    fvu = [e / t if t > 0 else float("nan") for e, t in zip(err, total)]
    return {"fvu_a": fvu[0], "fvu_b": fvu[1], "l0": active / n, "dead_fraction": 1 - float(fired.float().mean())}


def relative_decoder_norm(norms_F2: Tensor) -> Tensor:
    """Minder et al. 2025's Δnorm_j = 0.5·((||d_b,j|| − ||d_a,j||) / max(||d_a,j||, ||d_b,j||) + 1), shape (F,),
    in [0, 1]: 0 = exclusive to A, 1 = exclusive to B, 0.5 = shared. NaN where both norms are 0. `norms_F2` is
    `Crosscoder.decoder_norms()` (F, 2)."""
    a, b = norms_F2[:, 0], norms_F2[:, 1]
    biggest = torch.maximum(a, b)
    rel = 0.5 * ((b - a) / biggest.clamp_min(torch.finfo(norms_F2.dtype).tiny) + 1)
    return torch.where(biggest > 0, rel, torch.full_like(rel, float("nan")))


def latent_classes(rel_F: Tensor, exclusive: float = 0.1,
                   shared: tuple[float, float] = (0.4, 0.6)) -> dict[str, int]:
    """Counts of latents by relative decoder norm `rel_F` (F,): "exclusive_a" (rel < exclusive), "exclusive_b"
    (rel > 1 − exclusive), "shared" (shared[0] <= rel <= shared[1]) and "other" (the rest, NaN included).
    Latents that never fired in training keep their initial decoders (norms 0.1, 0.1: rel 0.5) and count
    as shared: pass only the latents that fire. Thresholds follow Minder et al.'s reading of the Δnorm histogram."""
    excl_a, excl_b = rel_F < exclusive, rel_F > 1 - exclusive
    mid = (rel_F >= shared[0]) & (rel_F <= shared[1]) & ~excl_a & ~excl_b
    counts = {"exclusive_a": int(excl_a.sum()), "exclusive_b": int(excl_b.sum()), "shared": int(mid.sum())}
    return {**counts, "other": len(rel_F) - sum(counts.values())}


@torch.no_grad()
def shared_decoder_cosine(model: Crosscoder, rel_F: Tensor,
                          shared: tuple[float, float] = (0.4, 0.6)) -> Optional[Tensor]:
    """Cosine (n_shared,) between W_dec_a[j] and W_dec_b[j] for each latent with shared[0] <= rel_F[j] <= shared[1]
    (Minder et al.'s check that shared latents write the same direction in both models); per-model scales
    do not change it. None when d_a != d_b: the two decoder rows live in spaces of different widths."""
    if model.d_a != model.d_b:
        return None
    mask = (rel_F >= shared[0]) & (rel_F <= shared[1])
    return F.cosine_similarity(model.W_dec_a_FD[mask], model.W_dec_b_FE[mask], dim=-1)
