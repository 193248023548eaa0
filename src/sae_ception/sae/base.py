"""What every SAE shares: config, input normalisation, encode/decode, the loss skeleton and checkpoints.

A variant (ReLU, TopK, ...) only supplies its activation and its extra loss terms, so new variants are one
small class plus one YAML file.
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.sae.registry import SAE_TYPES
from sae_ception.utils.batching import code_batch
from sae_ception.utils.io import load_checkpoint, load_state_strict, save_checkpoint

NORMALIZATIONS = ("none", "scale", "standardize")


def check_setting(ok: bool, setting: str, value, rule: str) -> None:
    """Raise the one-line ConfigError `sae.<setting>=<value> <rule>` unless `ok`."""
    if not ok:
        raise ConfigError(f"sae.{setting}={value!r} {rule}")


@dataclass
class SAEConfig:
    """Settings shared by every SAE type: architecture, input normalisation and the training schedule."""

    type: str = "relu"  # registry name of the variant (sae/relu.py, sae/topk.py, ...)
    d_sae: Optional[int] = None  # number of latents; None -> expansion_factor * d_in
    expansion_factor: int = 4  # width multiple used when d_sae is None
    normalize: str = "scale"  # none | scale (one scalar: mean squared norm = d_in) | standardize (per-dim mean/std)
    epochs: int = 50  # passes over the training activations
    batch_size: int = 128  # activation rows per optimiser step, over all processes
    lr: float = 1e-3  # Adam learning rate
    lr_warmup_steps: int = 0  # linear LR ramp over the first steps (0 = none)
    grad_clip: Optional[float] = 1.0  # max global gradient norm; None or <= 0 disables clipping
    dead_after_examples: int = 10000  # a latent silent this many training examples (or one epoch if shorter) is dead
    log_every: int = 10  # optimiser steps between log callbacks
    token_level: bool = False  # transformers: train on every non-padding token's activation, not the pooled one
    target_l0: Optional[float] = None  # penalised SAEs: find the penalty coefficient that gives this mean L0
    calibration_fraction: float = 0.25  # part of the training rows the coefficient search trains on

    penalty_setting: ClassVar[Optional[str]] = None  # the coefficient `target_l0` calibrates (None: not penalised)
    penalty_warmup_setting: ClassVar[Optional[str]] = None  # steps over which that coefficient ramps up from 0

    def __post_init__(self) -> None:
        check_setting(self.d_sae is None or self.d_sae > 0, "d_sae", self.d_sae,
                      "must be a positive integer (or null for expansion_factor * d_in)")
        check_setting(self.expansion_factor > 0, "expansion_factor", self.expansion_factor, "must be a positive integer")
        check_setting(self.normalize in NORMALIZATIONS, "normalize", self.normalize,
                      f"is not valid; use one of {', '.join(NORMALIZATIONS)}")
        check_setting(self.epochs >= 1, "epochs", self.epochs, "must be a positive integer (passes over the activations)")
        check_setting(self.batch_size > 0, "batch_size", self.batch_size, "must be a positive integer")
        check_setting(self.lr > 0, "lr", self.lr, "must be > 0")
        check_setting(self.lr_warmup_steps >= 0, "lr_warmup_steps", self.lr_warmup_steps, "must be >= 0")
        check_setting(self.dead_after_examples > 0, "dead_after_examples", self.dead_after_examples,
                      "must be a positive integer")
        check_setting(self.log_every > 0, "log_every", self.log_every, "must be a positive integer")
        for setting in (self.penalty_setting, self.penalty_warmup_setting):
            if setting is not None:
                check_setting(getattr(self, setting) >= 0, setting, getattr(self, setting), "must be >= 0")

    def penalty_weight(self, state: Optional["TrainingState"]) -> float:
        """The sparsity penalty's coefficient at a training step, ramped linearly from 0 over its warmup
        (no state = outside training: all of it)."""
        coefficient = getattr(self, self.penalty_setting)
        warmup = getattr(self, self.penalty_warmup_setting) if self.penalty_warmup_setting else 0
        if state is None or warmup == 0:
            return coefficient
        return coefficient * min(1.0, state.step / warmup)

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def validate_for(self, d_in: int) -> None:
        """Checks that need the input width (variants extend this, e.g. k <= width)."""
        if d_in <= 0:
            raise ConfigError(f"the SAE input width d_in={d_in} must be positive")
        if self.target_l0 is not None:
            if self.penalty_setting is None:
                raise ConfigError(f"sae.target_l0={self.target_l0} needs a penalised SAE (sae=relu or sae=jumprelu); "
                                  f"sae={self.type} sets its sparsity directly (sae.k)")
            if not 0 < self.target_l0 < self.width(d_in):
                raise ConfigError(f"sae.target_l0={self.target_l0} must be in (0, {self.width(d_in)}) (the SAE width)")
        check_setting(0 < self.calibration_fraction <= 1, "calibration_fraction", self.calibration_fraction, "must be in (0, 1]")




@dataclass
class TrainingState:
    """What only the trainer knows but a variant's loss may need: the step (warmups) and the dead latents."""

    step: int = 0
    dead_F: Optional[Tensor] = None  # bool per latent: silent for the dead window (trainer.dead_window)
    any_dead: bool = True  # host-side hint, refreshed every few steps: False lets variants skip dead-latent work
    measure_l0: bool = True  # False: nobody reads this step's L0 (not a logged step), so it need not be counted


@dataclass
class SAEOutput:
    recon: Tensor  # reconstruction in the raw input space, [B, D]
    codes_BF: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted terms + "total" (what is optimised)
    fired_F: Optional[Tensor] = None  # bool per latent: fired on this batch (when the step computed it anyway)
    l0: Optional[Tensor] = None  # mean non-zero codes per row (likewise)
    squared_error: Optional[Tensor] = None  # Σ (recon − x)² in the raw space (likewise)


class SparseAutoencoder(nn.Module):
    """x -> normalise -> ReLU-like code over d_sae latents -> unit-norm decoder rows -> denormalise."""

    config_class = SAEConfig
    registry_name = "base"  # set by @SAE_TYPES.register
    unit_decoder_rows: ClassVar[bool] = True  # decoder rows are kept at unit norm during and after training
    data_fitted_init: ClassVar[bool] = True  # b_dec starts at the data mean and the encoder scale is fitted to the data
    linear_decoder: ClassVar[bool] = True  # decode is codes @ W_dec_FD + b_dec: each latent has a decoder direction

    def __init__(self, cfg: SAEConfig, d_in: int):
        super().__init__()
        cfg.validate_for(d_in)
        self.cfg, self.d_in, self.d_sae = cfg, d_in, cfg.width(d_in)
        W_dec_FD = torch.randn(self.d_sae, d_in)
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)
        self.W_dec_FD = nn.Parameter(W_dec_FD)
        self.W_enc_DF = nn.Parameter(W_dec_FD.T.contiguous())  # tied init: each latent starts reading its own direction
        self.b_enc_F = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec_D = nn.Parameter(torch.zeros(d_in))  # pre-encoder bias, subtracted before encoding
        self.register_buffer("norm_shift_D", torch.zeros(d_in))
        self.register_buffer("norm_scale_D", torch.ones(d_in))

    # --- normalisation (buffers, so checkpoints carry it) -------------------------------------------
    @torch.no_grad()
    def set_normalization(self, acts_ND: Tensor) -> None:
        """Fit the normalisation to the training activations, then initialise from them: b_dec at their
        (normalised) mean and the encoder rescaled so the first reconstructions have the right size."""
        if acts_ND.ndim != 2 or acts_ND.shape[1] != self.d_in or len(acts_ND) == 0:
            raise ArtifactError(f"the SAE needs a non-empty [N, {self.d_in}] activation matrix, got {tuple(acts_ND.shape)}")
        mean_D, mean_sq_D = _moments(acts_ND, squares=self.cfg.normalize != "none")
        shift_D, scale_D = torch.zeros_like(mean_D), torch.ones_like(mean_D)
        if self.cfg.normalize == "scale":
            mean_sq_norm = mean_sq_D.sum()
            if mean_sq_norm > 0:
                scale_D = torch.full_like(mean_D, (mean_sq_norm / self.d_in).sqrt().item())
        elif self.cfg.normalize == "standardize":
            std_D = (mean_sq_D - mean_D**2).clamp_min(0).sqrt()
            shift_D, scale_D = mean_D, torch.where(std_D > 1e-8, std_D, torch.ones_like(std_D))
        self.norm_shift_D.copy_(shift_D)
        self.norm_scale_D.copy_(scale_D)
        self.b_dec_D.copy_(self.normalize(mean_D.to(self.norm_shift_D)))
        self._fit_encoder_scale_(acts_ND[:: max(1, len(acts_ND) // 4096)])

    @torch.no_grad()
    def _fit_encoder_scale_(self, sample_ND: Tensor) -> None:
        """Least-squares scalar on W_enc: a tied init over-reconstructs by about d_sae / (2 d_in), which costs
        short runs many steps. Exact for activations that are positively homogeneous while b_enc is 0."""
        cross, squares = 0.0, 0.0  # Σ recon·x and Σ recon², summed over chunks that bound the dense codes held
        for chunk_ND in sample_ND.split(code_batch(len(sample_ND), self.d_sae)):
            x_c_ND = self.normalize(chunk_ND.to(self.norm_shift_D.device)) - self.b_dec_D
            recon_ND = self.activation(x_c_ND @ self.W_enc_DF + self.b_enc_F) @ self.W_dec_FD
            cross, squares = cross + (recon_ND * x_c_ND).sum(), squares + recon_ND.pow(2).sum()
        scale = cross / squares
        if torch.isfinite(scale) and scale > 0:
            self.W_enc_DF.mul_(scale)

    def normalize(self, x_BD: Tensor) -> Tensor:
        if self.cfg.normalize == "none":  # the buffers are the identity: skip two passes over the batch
            return x_BD.to(self.norm_scale_D.dtype)
        return (x_BD.to(self.norm_scale_D.dtype) - self.norm_shift_D) / self.norm_scale_D

    def denormalize(self, x_BD: Tensor) -> Tensor:
        if self.cfg.normalize == "none":
            return x_BD
        return x_BD * self.norm_scale_D + self.norm_shift_D

    # --- encode / decode ----------------------------------------------------------------------------
    def pre_activation(self, x_norm_BD: Tensor) -> Tensor:
        return (x_norm_BD - self.b_dec_D) @ self.W_enc_DF + self.b_enc_F

    def activation(self, pre_BF: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_normalized(self, codes_BF: Tensor) -> Tensor:
        return codes_BF @ self.W_dec_FD + self.b_dec_D

    def encode(self, x_BD: Tensor) -> Tensor:
        """Codes of raw activations."""
        return self.activation(self.pre_activation(self.normalize(x_BD)))

    def decode(self, codes_BF: Tensor) -> Tensor:
        """Reconstruction in the raw activation space."""
        return self.denormalize(self.decode_normalized(codes_BF))

    # --- losses -------------------------------------------------------------------------------------
    def forward(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        """Codes, raw-space reconstruction and losses; `mse` is per element in the normalised space."""
        x_norm_BD = self.normalize(x_BD)
        pre_BF = self.pre_activation(x_norm_BD)
        codes_BF = self.activation(pre_BF)
        recon_norm_BD = self.decode_normalized(codes_BF)
        losses = {"mse": (recon_norm_BD - x_norm_BD).pow(2).mean()}
        losses.update(self.auxiliary_losses(x_norm_BD=x_norm_BD, pre_BF=pre_BF, codes_BF=codes_BF,
                                            recon_norm_BD=recon_norm_BD, state=state))
        total = losses["mse"]
        for name, weight in self.loss_weights(state).items():
            total = total + weight * losses[name]
        losses["total"] = total
        return SAEOutput(recon=self.denormalize(recon_norm_BD), codes_BF=codes_BF, losses=losses)

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        """One training batch: the losses, with every parameter's `.grad` set. This default runs autograd on
        `forward`; variants override it with hand-written gradients that skip work autograd cannot know is
        unneeded (tests check both give the same losses, gradients and codes)."""
        out = self(x_BD, state)
        out.losses["total"].backward()
        return out

    def auxiliary_losses(self, *, x_norm_BD: Tensor, pre_BF: Tensor, codes_BF: Tensor, recon_norm_BD: Tensor,
                         state: Optional[TrainingState]) -> dict[str, Tensor]:
        """The variant's extra loss terms, unweighted (they are logged as they are)."""
        return {}

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        """Weight of each auxiliary term in `total` (a Python float, so warmups cost no device sync)."""
        return {}

    # --- decoder constraint -------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (after each step), so code magnitudes carry the scale."""
        self.W_dec_FD /= self.W_dec_FD.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the gradient component along each (unit) decoder row (before each step): it only changes norms."""
        grad_FD = self.W_dec_FD.grad
        if grad_FD is not None:
            grad_FD -= (grad_FD * self.W_dec_FD).sum(-1, keepdim=True) * self.W_dec_FD

    def finish_training_(self, acts_ND: Optional[Tensor] = None) -> None:
        """Called once when training ends, with the training activations [N, d_in] (raw space): variants that
        train in another parametrisation convert here, and those with inference-only parameters fit them
        (BatchTopK's threshold). Reads at most `FIT_ROWS` rows (`fit_sample`)."""

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, directory: Union[str, Path], extra: Optional[dict] = None) -> Path:
        """Weights + a config.json that rebuilds this SAE without the original run's config."""
        meta = {"kind": "sae", "type": self.registry_name, "d_in": self.d_in, "d_sae": self.d_sae,
                "config": asdict(self.cfg)}
        if extra:
            meta["extra"] = extra
        return save_checkpoint(directory, self.state_dict(), meta)


def _moments(acts_ND: Tensor, chunk: int = 65536, squares: bool = True) -> tuple[Tensor, Tensor]:
    """Per-dim mean and mean square in float64, chunked so a large matrix is never copied whole.
    Without `squares` (no normalisation to fit) only the mean is needed (it initialises b_dec): it is
    summed by GEMV in float32 within a block, float64 across blocks."""
    sum_D = torch.zeros(acts_ND.shape[1], dtype=torch.float64, device=acts_ND.device)
    sum_sq_D = torch.zeros_like(sum_D)
    for block in acts_ND.split(chunk):
        if not squares:  # a float32 GEMV per block (fast), summed across blocks in float64
            block = block.float()
            sum_D += torch.mv(block.T, block.new_ones(len(block))).double()
            continue
        block = block.double()
        sum_D += block.sum(0)
        sum_sq_D += block.pow(2).sum(0)
    return sum_D / len(acts_ND), sum_sq_D / len(acts_ND)


FIT_ROWS = 16384  # rows of the training activations that end-of-training estimates and checks read


def fit_sample(acts_ND: Tensor) -> Tensor:
    """The training rows that end-of-training estimates and checks read: `acts_ND` [N, d_in] itself when
    N <= `FIT_ROWS`, else a fixed-seed sample of `FIT_ROWS` rows in row order (one gather, kind to
    memory-mapped files: at most FIT_ROWS x d_in values in memory, whatever N)."""
    n = len(acts_ND)
    if n <= FIT_ROWS:
        return acts_ND
    index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:FIT_ROWS].sort().values
    return acts_ND[index.to(acts_ND.device)]


def fit_rows(acts_ND: Tensor, rows_per_chunk: int, device: torch.device) -> Iterator[Tensor]:
    """`fit_sample(acts_ND)`, `rows_per_chunk` rows at a time, as float32 on `device`."""
    for chunk in fit_sample(acts_ND).split(rows_per_chunk):
        yield chunk.to(device).float()


def build_sae(cfg: SAEConfig, d_in: int) -> SparseAutoencoder:
    """A fresh SAE of `cfg.type`; a plain SAEConfig gets the variant's defaults for its own settings."""
    cls = SAE_TYPES.get(cfg.type)
    if not isinstance(cfg, cls.config_class):
        cfg = cls.config_class(**{f.name: getattr(cfg, f.name) for f in fields(cls.config_class) if hasattr(cfg, f.name)})
    cfg.validate_for(d_in)
    return cls(cfg, d_in)


def frozen(sae: "SparseAutoencoder") -> "SparseAutoencoder":
    """`sae` on the CPU, in eval mode, with no parameter requiring gradients (an SAE read, never trained)."""
    sae = sae.cpu().eval()
    for param in sae.parameters():
        param.requires_grad_(False)
    return sae


def load_sae(directory: Union[str, Path]) -> SparseAutoencoder:
    """Rebuild a saved SAE (any registered type) from its folder alone; returned on the CPU."""
    state, meta = load_checkpoint(directory)
    if meta.get("kind") != "sae":
        raise ArtifactError(f"{directory} holds a {meta.get('kind', 'unknown')} checkpoint, not an SAE")
    try:
        cls = SAE_TYPES.get(meta["type"])
        known = {f.name for f in fields(cls.config_class)}
        cfg = cls.config_class(**{k: v for k, v in meta["config"].items() if k in known})
        sae = cls(cfg, int(meta["d_in"]))
    except (KeyError, TypeError, ConfigError) as ex:
        raise ArtifactError(f"{directory}/config.json does not describe a valid SAE ({ex})") from None
    if sae.d_sae != meta.get("d_sae"):
        raise ArtifactError(f"{directory}/config.json says d_sae={meta.get('d_sae')} but its config builds {sae.d_sae}")
    load_state_strict(sae, state, str(directory), "sae checkpoint")
    return sae.eval()  # inference behaviour (e.g. BatchTopK's learned threshold, not the batch's top k)
