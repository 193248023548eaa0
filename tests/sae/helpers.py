"""Small SAEs of any registered type and sparse synthetic data, shared by the SAE tests."""

from dataclasses import fields

import torch

from sae_ception.sae import SAE_TYPES, build_sae


# the types whose decode is linear (W_dec_FD, b_dec_D, ...): the contracts of those parameters apply to these only
LINEAR_SAE_TYPES = [name for name in SAE_TYPES.names() if SAE_TYPES.get(name).linear_decoder]


def make_config(sae_type: str, **overrides):
    """The registered config class of `sae_type`, small enough for a unit test."""
    settings = {"d_sae": 32, "epochs": 1, "batch_size": 64, "log_every": 1, **overrides}
    config_class = SAE_TYPES.get(sae_type).config_class
    if "k" in {f.name for f in fields(config_class)}:  # TopK-style variants
        settings.setdefault("k", 4)
    return config_class(type=sae_type, **settings)


def make_sae(sae_type: str, d_in: int = 8, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_sae(make_config(sae_type, **overrides), d_in)


def sparse_data(n: int = 2048, d: int = 16, n_dirs: int = 32, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Rows that are non-negative combinations of `active` out of `n_dirs` random unit directions."""
    gen = torch.Generator().manual_seed(seed)
    dirs_KD = torch.randn(n_dirs, d, generator=gen)
    dirs_KD /= dirs_KD.norm(dim=-1, keepdim=True)
    which_NA = torch.rand(n, n_dirs, generator=gen).argsort(-1)[:, :active]
    coeffs_NK = torch.zeros(n, n_dirs).scatter_(1, which_NA, torch.rand(n, active, generator=gen) + 0.5)
    return coeffs_NK @ dirs_KD
