"""The paper's SAE, as its public code builds and trains it (Alex-Bishka/SAE-ception,
DIGIT-MNIST/models_and_data/sae.py; the training loops of DIGIT-MNIST/main.py and sae_train.py):

    codes = ReLU(x W_enc + b_enc)            nn.Linear(d_in, d_sae): no pre-encoder bias subtracted
    recon = codes W_dec + b_dec              nn.Linear(d_sae, d_in)
    loss  = mean_{b,d} (recon − x)²  +  λ · mean_{b,f} |codes|     (nn.MSELoss(), torch.mean(torch.abs(codes)))

What differs from `sae=relu`, each on purpose:
- the L1 term is averaged over the batch AND the latents, so `l1_coefficient: 0.75` is the paper's 0.75
  (the same penalty as sae=relu's Σ_f |z_f| at l1_coefficient 0.75 / d_sae); it is logged as `l1_mean`;
- decoder rows are free and the L1 is plain: no gradient projection, no renormalisation, no norm weighting,
  and no folding of the norms into the encoder when training ends, so every later stage (sharpening,
  clustering by argmax over latents, feature reports) sees the paper's raw codes. Their scale is therefore
  not comparable across latents (a latent's contribution is z_f ‖W_dec[f]‖);
- PyTorch's default nn.Linear initialisation (weights kaiming-uniform, i.e. U(±1/√fan_in), biases
  U(±1/√fan_in)), drawn in the paper's order (encoder weight, encoder bias, decoder weight, decoder bias)
  from the global generator as the caller left it, instead of the data-fitted tied start (b_dec at the data
  mean, the encoder rescaled by least squares), which this type skips;
- no input normalisation (`normalize: none`; another value fits the normalisation buffers only, a deliberate
  departure from the paper that keeps its initialisation);
- the paper's schedule, in configs/sae/paper_relu.yaml: Adam at lr 1e-3 with torch's defaults (no weight
  decay), batch 64, 20 epochs, no warmup, no gradient clipping, d_sae 256;
- gradients are autograd's on `forward` (the hand-written path in fast_grads.py assumes the pre-encoder bias).

Not reproduced: the paper trains its SAE alongside the classifier, one SAE step per classifier step on the
activations of the model as it trains; this project trains it post hoc on the frozen activations of model N.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_ception.sae.base import SAEConfig, SparseAutoencoder, TrainingState
from sae_ception.sae.registry import SAE_TYPES


@dataclass
class PaperReluSAEConfig(SAEConfig):
    """The paper's settings as defaults (its DIGIT-MNIST 256-0.75 runs)."""

    type: str = "paper_relu"
    d_sae: Optional[int] = 256  # the paper's HIDDEN_SIZE
    normalize: str = "none"  # the paper feeds raw activations
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3  # torch.optim.Adam's default
    grad_clip: Optional[float] = None  # the paper does not clip
    l1_coefficient: float = 0.75  # λ on mean_{b,f} |z| (the paper's L1_PENALTY; 0.01 in its other runs)

    penalty_setting: ClassVar[Optional[str]] = "l1_coefficient"


@SAE_TYPES.register("paper_relu")
class PaperReluSAE(SparseAutoencoder):
    config_class = PaperReluSAEConfig
    # contracts of the other types that this one breaks on purpose (tests of those contracts can filter on them)
    unit_decoder_rows: ClassVar[bool] = False  # trained rows keep whatever norms they reach, to the end
    data_fitted_init: ClassVar[bool] = False  # set_normalization leaves b_dec and W_enc at their nn.Linear init

    def __init__(self, cfg: PaperReluSAEConfig, d_in: int):
        generator_state = torch.get_rng_state()
        super().__init__(cfg, d_in)
        # the base class draws its tied start from the global generator; rewind it, so the draws below are the
        # ones the paper's SparseAutoencoder(d_in, d_sae) makes under the same seed (and leave it as that would)
        torch.set_rng_state(generator_state)
        encoder, decoder = nn.Linear(d_in, self.d_sae), nn.Linear(self.d_sae, d_in)
        with torch.no_grad():
            self.W_enc_DF.copy_(encoder.weight.T)
            self.b_enc_F.copy_(encoder.bias)
            self.W_dec_FD.copy_(decoder.weight.T)
            self.b_dec_D.copy_(decoder.bias)

    # --- no data-fitted start -----------------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, acts_ND: Tensor) -> None:
        """Check `acts_ND` [N, d_in] and fit the normalisation buffers (the identity for `normalize: none`);
        unlike the base class, keep the nn.Linear initialisation of b_dec and W_enc.
        Raises ArtifactError for an empty or wrongly shaped matrix."""
        b_dec_D = self.b_dec_D.detach().clone()
        super().set_normalization(acts_ND)
        self.b_dec_D.copy_(b_dec_D)

    def _fit_encoder_scale_(self, sample_ND: Tensor) -> None:
        """The paper's encoder starts where nn.Linear puts it: no rescaling."""

    # --- the paper's encoder and loss ---------------------------------------------------------------
    def pre_activation(self, x_norm_BD: Tensor) -> Tensor:
        """x W_enc + b_enc, [B, d_sae]: the paper's encoder reads x itself (no b_dec subtracted first)."""
        return torch.addmm(self.b_enc_F, x_norm_BD, self.W_enc_DF)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return F.relu(pre_BF)

    def auxiliary_losses(self, *, codes_BF: Tensor, **_) -> dict[str, Tensor]:
        """mean_{b,f} |z_bf|: averaged over the batch and the latents (torch.mean(torch.abs(codes)))."""
        return {"l1_mean": codes_BF.abs().mean()}

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        return {"l1_mean": self.cfg.penalty_weight(state)}

    # --- free decoder: neither projected nor renormalised, nor folded at the end --------------------
    def normalize_decoder_(self) -> None:
        """Rows keep their norms (the paper's decoder is a plain nn.Linear)."""

    def remove_parallel_decoder_grad_(self) -> None:
        """The full gradient reaches the decoder rows, norm-changing component included."""
