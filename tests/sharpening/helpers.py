"""A hand-made 3-latent SAE of any registered type and 4 hand-made examples, shared by the sharpening tests.

The SAE reads and writes each latent on its own axis (W_enc = W_dec = I, b_enc = 0, b_dec = 0.5), so with
no normalisation codes = act(x - 0.5) and decode(c) = c + 0.5: every target below is computed by hand.
"""

from dataclasses import fields

import torch

from sae_ception.sae import SAE_TYPES, build_sae
from sae_ception.sharpening import SharpeningConfig, build_sharpener

ACTS = torch.tensor(
    [
        [3.0, 1.0, 1.2],  # class 0; relu codes [2.5, 0.5, 0.7], topk(k=2) codes [2.5, 0, 0.7]
        [2.0, 0.0, 1.5],  # class 0; codes [1.5, 0, 1.0] (both)
        [1.0, 4.0, 0.0],  # class 1; codes [0.5, 3.5, 0] (both)
        [0.0, 3.0, 2.0],  # class 1; codes [0, 2.5, 1.5] (both)
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])

# per_class with 1 latent kept, for relu and topk alike: class 0 keeps latent 0, class 1 keeps latent 1
# (class-mean codes [2, .25 or 0, .85] and [.25, 3, .75]); targets = kept code + 0.5.
PER_CLASS_TOP1 = torch.tensor([[3.0, 0.5, 0.5], [2.0, 0.5, 0.5], [0.5, 4.0, 0.5], [0.5, 3.0, 0.5]])
# per_class with 2 kept: class 0 keeps {0, 2}, class 1 keeps {1, 2} (relu codes).
PER_CLASS_TOP2 = torch.tensor([[3.0, 0.5, 1.2], [2.0, 0.5, 1.5], [0.5, 4.0, 0.5], [0.5, 3.0, 2.0]])
# per_example with 2 kept: each example's own two largest codes (relu codes).
PER_EXAMPLE_TOP2 = torch.tensor([[3.0, 0.5, 1.2], [2.0, 0.5, 1.5], [1.0, 4.0, 0.5], [0.5, 3.0, 2.0]])

HAND_SAE_TYPES = ["relu", "topk"]


def hand_sae(sae_type: str, b_dec=(0.5, 0.5, 0.5), scale: float = 1.0):
    """The 3-latent SAE above, built through the registry; `scale` != 1 uses `normalize: scale` with that
    scale, so raw = normalised * scale."""
    config_class = SAE_TYPES.get(sae_type).config_class
    settings = {"d_sae": 3, "normalize": "none" if scale == 1.0 else "scale"}
    if "k" in {f.name for f in fields(config_class)}:
        settings["k"] = 2
    sae = build_sae(config_class(type=sae_type, **settings), d_in=3)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.eye(3))
        sae.W_dec_FD.copy_(torch.eye(3))
        sae.b_enc_F.zero_()
        sae.b_dec_D.copy_(torch.tensor(b_dec))
        sae.norm_scale_D.fill_(scale)
    return sae


def make_targets(kind: str, sae, acts=ACTS, labels=LABELS, seed: int = 0, batch_size: int = 4096, **settings):
    config_class = build_sharpener(SharpeningConfig(type=kind)).config_class
    sharpener = build_sharpener(config_class(type=kind, **settings))
    return sharpener.make_targets(sae, acts, labels, torch.Generator().manual_seed(seed), batch_size=batch_size)
