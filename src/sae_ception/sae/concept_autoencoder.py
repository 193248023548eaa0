"""The concept autoencoder of the concept-transfer reference (`../shared/reference/network-surgery-deep-dive.md`,
"SAE (Sparse Autoencoder) Architecture", `ConceptSAE`): a small autoencoder with a two-layer encoder and a
two-layer decoder, whose codes the reference calls a model's "concept space":

    z     = ReLU(W₂ ReLU(W₁ x + b₁) + b₂)            encoder: d_in -> 2c -> c   (c = d_sae, the concept dimension)
    recon = W₄ ReLU(W₃ z + b₃) + b₄                   decoder: c -> 2c -> d_in
    loss  = mean_{b,d} (recon − x)²  +  λ · mean_{b,f} |z|

It is here so that the reference's figures, which depend on it, can be tested as stated (`sae=concept_autoencoder`
in scripts/transfer_concept.py). Departures and choices, each on purpose:
- the reference's code block ends the decoder with a Linear (no ReLU) while its formula section writes a final
  ReLU; the code is followed (`decoder_output_relu: true` gives the formula's);
- the reference's "λ‖E(h)‖₁" with λ = 0.05 is read as the mean over the batch and the latents (as in
  `paper_relu`); its code is not public, so that scale is an assumption (logged as `l1_mean`);
- PyTorch's default nn.Linear initialisation, except the decoder's output bias, which starts at the training
  activations' mean (in the normalised space): with PyTorch's default a short run starts, and may end, with
  reconstructions worse than the mean, which the trainer calls a divergence; raw inputs (`normalize: none`).

Its decoder is not linear, so it has no decoder directions: scripts/train_cycle.py, whose sharpening and feature
reports read them, refuses it in one line. Codes and reconstructions (`encode`, `decode`) work as for any SAE.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_ception.sae.base import SAEConfig, SparseAutoencoder, check_setting
from sae_ception.sae.paper_relu import PaperReluSAE
from sae_ception.sae.registry import SAE_TYPES


@dataclass
class ConceptAutoencoderConfig(SAEConfig):
    """The reference's settings as defaults: concept dimension 24, λ = 0.05 (its "Critical Design Decisions")."""

    type: str = "concept_autoencoder"
    d_sae: Optional[int] = 24  # c, the concept dimension (the reference: 20-32, 24 in its ConceptSAE)
    normalize: str = "none"  # the reference feeds raw penultimate features
    hidden_factor: int = 2  # width of each hidden layer of encoder and decoder, in multiples of c (the reference: 2)
    l1_coefficient: float = 0.05  # λ on mean_{b,f} |z| (the reference's sparsity_weight)
    decoder_output_relu: bool = False  # ReLU on the reconstruction (the reference's formula; its code has none)
    epochs: int = 20
    batch_size: int = 64
    grad_clip: Optional[float] = None

    penalty_setting: ClassVar[Optional[str]] = "l1_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(self.hidden_factor >= 1, "hidden_factor", self.hidden_factor,
                      "must be a positive integer (hidden width = hidden_factor x d_sae)")


@SAE_TYPES.register("concept_autoencoder")
class ConceptAutoencoder(SparseAutoencoder):
    """Two-layer encoder and decoder (module docstring). `W_enc_DF`, `W_dec_FD`, `b_enc_F` and `b_dec_D` of the
    linear SAEs do not exist here: code that needs decoder directions must check `linear_decoder`."""

    config_class = ConceptAutoencoderConfig
    linear_decoder: ClassVar[bool] = False
    unit_decoder_rows: ClassVar[bool] = False
    data_fitted_init: ClassVar[bool] = False

    def __init__(self, cfg: ConceptAutoencoderConfig, d_in: int):
        generator_state = torch.get_rng_state()
        super().__init__(cfg, d_in)
        torch.set_rng_state(generator_state)  # the layers below draw as the reference's module would
        for name in ("W_dec_FD", "W_enc_DF", "b_enc_F", "b_dec_D"):
            delattr(self, name)
        hidden = cfg.hidden_factor * self.d_sae
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, self.d_sae))
        self.decoder = nn.Sequential(nn.Linear(self.d_sae, hidden), nn.ReLU(), nn.Linear(hidden, d_in))

    @torch.no_grad()
    def set_normalization(self, acts_ND: Tensor) -> None:
        """Fit the normalisation buffers to `acts_ND` [N, d_in] (the identity for `normalize: none`) and start the
        decoder's output bias at the activations' (normalised) mean; the other layers keep their nn.Linear
        initialisation."""
        from sae_ception.errors import ArtifactError
        from sae_ception.sae.base import _moments

        if acts_ND.ndim != 2 or acts_ND.shape[1] != self.d_in or len(acts_ND) == 0:
            raise ArtifactError(f"the SAE needs a non-empty [N, {self.d_in}] activation matrix, got {tuple(acts_ND.shape)}")
        mean_D, mean_sq_D = _moments(acts_ND)
        if self.cfg.normalize != "none":
            self._fit_normalization(mean_D, mean_sq_D)
        self.decoder[-1].bias.copy_(self.normalize(mean_D.to(self.norm_shift_D)))  # start at the mean

    def _fit_normalization(self, mean_D: Tensor, mean_sq_D: Tensor) -> None:
        shift_D, scale_D = torch.zeros_like(mean_D), torch.ones_like(mean_D)
        if self.cfg.normalize == "scale":
            if mean_sq_D.sum() > 0:
                scale_D = torch.full_like(mean_D, (mean_sq_D.sum() / self.d_in).sqrt().item())
        else:  # standardize
            std_D = (mean_sq_D - mean_D**2).clamp_min(0).sqrt()
            shift_D, scale_D = mean_D, torch.where(std_D > 1e-8, std_D, torch.ones_like(std_D))
        self.norm_shift_D.copy_(shift_D)
        self.norm_scale_D.copy_(scale_D)

    def pre_activation(self, x_norm_BD: Tensor) -> Tensor:
        return self.encoder(x_norm_BD)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return F.relu(pre_BF)

    def decode_normalized(self, codes_BF: Tensor) -> Tensor:
        """The decoder's output in the normalised space; with `decoder_output_relu`, clipped at 0 in the raw space
        (the raw features are post-ReLU), whatever the normalisation (the identity for `normalize: none`)."""
        recon = self.decoder(codes_BF)
        if not self.cfg.decoder_output_relu:
            return recon
        if self.cfg.normalize == "none":
            return F.relu(recon)
        return self.normalize(F.relu(self.denormalize(recon)))

    # the paper's SAE's L1 (mean_{b,f} |z_bf|, logged as l1_mean, weighted by l1_coefficient), and no decoder rows to
    # renormalise or project
    auxiliary_losses = PaperReluSAE.auxiliary_losses
    loss_weights = PaperReluSAE.loss_weights
    normalize_decoder_ = PaperReluSAE.normalize_decoder_
    remove_parallel_decoder_grad_ = PaperReluSAE.remove_parallel_decoder_grad_
