"""The concept autoencoder (sae/concept_autoencoder.py): its forward pass and losses by hand on a tiny instance,
the optional output ReLU, its initialisation (the reference module's draws), normalisation, checkpoints, training
on low-rank data, reproducibility, and its one-line refusals (hidden_factor; train_cycle, which needs a linear
decoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sae_ception.config import parse_config, typed_section
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.sae import SAE_TYPES, build_sae, load_sae, train_sae
from sae_ception.sae.concept_autoencoder import ConceptAutoencoder, ConceptAutoencoderConfig
from tests.conftest import compose_cfg
from tests.sae.helpers import LINEAR_SAE_TYPES

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "sae"


def tiny(**settings) -> ConceptAutoencoder:
    """d_in = 3, c = 2, hidden_factor = 1, with these hand-set weights:

    W₁ = [[1, 0, 1], [0, 1, −1]], b₁ = (0, −1)      W₂ = [[1, 1], [2, −1]], b₂ = (0.5, 0)
    W₃ = I₂,                      b₃ = (0, −1)      W₄ = [[1, 0], [0, 1], [−1, 2]], b₄ = (0, 0, 1)
    """
    torch.manual_seed(0)
    sae = build_sae(ConceptAutoencoderConfig(d_sae=2, hidden_factor=1, **settings), 3)
    weights = [([[1.0, 0, 1], [0, 1, -1]], [0.0, -1]), ([[1.0, 1], [2, -1]], [0.5, 0]),
               ([[1.0, 0], [0, 1]], [0.0, -1]), ([[1.0, 0], [0, 1], [-1, 2]], [0.0, 0, 1])]
    with torch.no_grad():
        for linear, (w, b) in zip((sae.encoder[0], sae.encoder[2], sae.decoder[0], sae.decoder[2]), weights):
            linear.weight.copy_(torch.tensor(w))
            linear.bias.copy_(torch.tensor(b))
    return sae


# row 1, x = (1, 2, −1): W₁x + b₁ = (0, 2) -> ReLU (0, 2); W₂ · + b₂ = (2.5, −2) -> z = (2.5, 0);
#   W₃ z + b₃ = (2.5, −1) -> ReLU (2.5, 0); W₄ · + b₄ = (2.5, 0, −1.5); squared errors 2.25, 4, 0.25 (sum 6.5)
# row 2, x = 0: W₁x + b₁ = (0, −1) -> (0, 0); b₂ -> z = (0.5, 0); (0.5, −1) -> (0.5, 0); recon (0.5, 0, 0.5);
#   squared errors 0.25, 0, 0.25 (sum 0.5)
X = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
CODES = torch.tensor([[2.5, 0.0], [0.5, 0.0]])
RECON = torch.tensor([[2.5, 0.0, -1.5], [0.5, 0.0, 0.5]])


def low_rank(n: int = 512, d: int = 8, rank: int = 3, seed: int = 0) -> torch.Tensor:
    """Non-negative rows in a rank-3 subspace: uniform coefficients on uniform basis rows."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, rank, generator=g) @ torch.rand(rank, d, generator=g)


def trained(accelerator, seed: int = 0, **settings):
    cfg = ConceptAutoencoderConfig(**{"d_sae": 8, "epochs": 20, "batch_size": 64, "lr": 1e-2, "log_every": 1000,
                                      **settings})
    torch.manual_seed(seed)
    sae = build_sae(cfg, 8)
    stats = train_sae(sae, low_rank(), cfg, accelerator=accelerator, seed=seed, show_progress=False)
    return sae, stats


# --- forward and losses by hand -----------------------------------------------------------------------------------
def test_forward_codes_reconstruction_and_losses_by_hand():
    sae = tiny()
    out = sae(X)
    torch.testing.assert_close(out.codes_BF, CODES)
    torch.testing.assert_close(out.recon, RECON)
    torch.testing.assert_close(sae.encode(X), CODES)
    torch.testing.assert_close(sae.decode(CODES), RECON)
    assert set(out.losses) == {"mse", "l1_mean", "total"}
    assert out.losses["mse"].item() == pytest.approx((6.5 + 0.5) / 6)  # mean over 2 rows x 3 dims
    assert out.losses["l1_mean"].item() == pytest.approx((2.5 + 0 + 0.5 + 0) / 4)  # mean over 2 rows x 2 latents
    assert out.losses["total"].item() == pytest.approx(7 / 6 + 0.05 * 0.75)  # λ = 0.05 by default


def test_the_l1_coefficient_weights_l1_mean_in_the_total():
    out = tiny(l1_coefficient=2.0)(X)
    assert out.losses["total"].item() == pytest.approx(7 / 6 + 2.0 * 0.75)
    assert tiny(l1_coefficient=0.0)(X).losses["total"].item() == pytest.approx(7 / 6)


def test_decoder_output_relu_clips_the_reconstruction():
    """Row 1's last output, −1.5, becomes 0: squared error 1 instead of 0.25 (mse (7.25 + 0.5) / 6)."""
    sae = tiny(decoder_output_relu=True)
    out = sae(X)
    torch.testing.assert_close(out.recon, torch.tensor([[2.5, 0.0, 0.0], [0.5, 0.0, 0.5]]))
    torch.testing.assert_close(out.codes_BF, CODES)  # the encoder is unchanged
    assert out.losses["mse"].item() == pytest.approx(7.75 / 6)
    assert bool((sae.decode(torch.randn(50, 2) * 5).ge(0)).all())


def test_gradients_reach_all_four_layers_and_the_codes():
    sae = tiny()
    sae.loss_and_grads(X + torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]))
    for name, param in sae.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
    assert float(sae.decoder[2].weight.grad.abs().sum()) > 0 and float(sae.encoder[0].weight.grad.abs().sum()) > 0


# --- architecture and initialisation ------------------------------------------------------------------------------
def test_architecture_widths_and_no_linear_decoder():
    sae = build_sae(ConceptAutoencoderConfig(d_sae=5, hidden_factor=3), 7)
    widths = [(m.in_features, m.out_features) for m in (*sae.encoder[::2], *sae.decoder[::2])]
    assert widths == [(7, 15), (15, 5), (5, 15), (15, 7)]
    assert isinstance(sae.encoder[1], nn.ReLU) and isinstance(sae.decoder[1], nn.ReLU)
    assert type(sae).linear_decoder is False and "concept_autoencoder" not in LINEAR_SAE_TYPES
    assert SAE_TYPES.get("concept_autoencoder") is ConceptAutoencoder
    for name in ("W_dec_FD", "W_enc_DF", "b_enc_F", "b_dec_D"):
        assert not hasattr(sae, name)
    assert set(dict(sae.named_buffers())) == {"norm_shift_D", "norm_scale_D"}


def test_initialisation_draws_as_the_reference_module_would():
    """After torch.manual_seed(s), the SAE's layers equal nn.Linear's draws in the reference's order (encoder,
    then decoder): the base class's own draws are undone."""
    torch.manual_seed(7)
    sae = build_sae(ConceptAutoencoderConfig(d_sae=4), 6)
    torch.manual_seed(7)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    decoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    for ours, theirs in ((sae.encoder, encoder), (sae.decoder, decoder)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key


def test_defaults_are_the_references_and_the_yaml_gives_the_dataclass_defaults():
    cfg = ConceptAutoencoderConfig()
    assert (cfg.d_sae, cfg.hidden_factor, cfg.l1_coefficient, cfg.normalize) == (24, 2, 0.05, "none")
    assert cfg.decoder_output_relu is False and cfg.grad_clip is None
    from_yaml = typed_section("sae", ConceptAutoencoderConfig, OmegaConf.load(CONFIG_DIR / "concept_autoencoder.yaml"))
    assert from_yaml == cfg


# --- normalisation ------------------------------------------------------------------------------------------------
def test_set_normalization_none_keeps_the_identity_and_starts_the_output_bias_at_the_mean():
    sae = tiny()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    acts = torch.tensor([[1.0, 0.0, -2.0], [3.0, 4.0, 0.0]])
    sae.set_normalization(acts)
    torch.testing.assert_close(sae.decoder[2].bias, torch.tensor([2.0, 2.0, -1.0]))  # the column means
    changed = [k for k, v in before.items() if not torch.equal(v, sae.state_dict()[k])]
    assert changed == ["decoder.2.bias"]  # buffers stay the identity, the other layers their initialisation
    assert torch.equal(sae.normalize(acts), acts) and torch.equal(sae.denormalize(acts), acts)


def test_standardize_normalises_inputs_before_the_encoder_and_keeps_the_layers():
    sae = tiny(normalize="standardize")
    layers = {k: v.clone() for k, v in sae.state_dict().items() if not k.startswith("norm_")}
    acts = torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 2.0], [4.0, 5.0, 2.0]])  # means (2, 3, 2), stds (√(8/3), √(8/3), 0)
    sae.set_normalization(acts)
    std = (8 / 3) ** 0.5
    torch.testing.assert_close(sae.norm_shift_D, torch.tensor([2.0, 3.0, 2.0]))
    torch.testing.assert_close(sae.norm_scale_D, torch.tensor([std, std, 1.0]))  # a constant dim is not divided
    torch.testing.assert_close(sae.decoder[2].bias, torch.zeros(3))  # the normalised mean
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in layers.items() if k != "decoder.2.bias")
    with torch.no_grad():
        sae.decoder[2].bias.copy_(layers["decoder.2.bias"])  # back to the hand-set layers for the numbers below
    x = torch.tensor([[2.0 + std, 3.0 + 2 * std, 1.0]])  # normalised: (1, 2, −1), row 1 of X
    torch.testing.assert_close(sae.encode(x), CODES[:1])
    torch.testing.assert_close(sae.decode(CODES[:1]), RECON[:1] * sae.norm_scale_D + sae.norm_shift_D)
    assert sae(x).losses["mse"].item() == pytest.approx(6.5 / 3)  # in the normalised space


def test_set_normalization_refuses_an_empty_or_misshaped_matrix():
    with pytest.raises(ArtifactError, match=r"non-empty \[N, 3\]"):
        tiny().set_normalization(torch.zeros(0, 3))
    with pytest.raises(ArtifactError, match=r"got \(4, 2\)"):
        tiny().set_normalization(torch.zeros(4, 2))


def test_decoder_constraints_are_no_ops():
    sae = tiny()
    sae.loss_and_grads(X)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in sae.named_parameters()}
    sae.normalize_decoder_()
    sae.remove_parallel_decoder_grad_()
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(p.grad, grads[k]) for k, p in sae.named_parameters())


# --- checkpoints ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_relu", [False, True])
def test_save_and_load_round_trip_gives_identical_codes_and_settings(tmp_path, output_relu):
    sae = tiny(decoder_output_relu=output_relu, l1_coefficient=0.3)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is ConceptAutoencoder and loaded.cfg == sae.cfg and not loaded.training
    assert loaded.cfg.decoder_output_relu is output_relu and loaded.cfg.hidden_factor == 1
    x = torch.randn(20, 3) * 3
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    assert torch.equal(loaded.encode(X), CODES)


# --- training -----------------------------------------------------------------------------------------------------
def test_training_on_low_rank_data_explains_most_of_the_variance(accelerator):
    sae, stats = trained(accelerator)
    assert stats["final_fit"]["explained_variance"] > 0.8
    assert stats["steps"] == 20 * 8  # 512 rows in batches of 64, 20 epochs
    assert {"mse", "l1_mean", "total"} <= set(stats)
    assert stats["total"] == pytest.approx(stats["mse"] + 0.05 * stats["l1_mean"], rel=1e-5)
    x = low_rank()
    with torch.no_grad():
        ev = 1 - (sae.decode(sae.encode(x)) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(ev) == pytest.approx(stats["final_fit"]["explained_variance"], abs=1e-4)


def test_a_stronger_l1_gives_smaller_codes(accelerator):
    weak, _ = trained(accelerator, l1_coefficient=0.0)
    strong, _ = trained(accelerator, l1_coefficient=1.0)
    x = low_rank()
    with torch.no_grad():
        assert float(strong.encode(x).abs().mean()) < 0.5 * float(weak.encode(x).abs().mean())


def test_same_seed_gives_identical_weights_and_another_seed_does_not(accelerator):
    first, _ = trained(accelerator, seed=3, epochs=2)
    again, _ = trained(accelerator, seed=3, epochs=2)
    other, _ = trained(accelerator, seed=4, epochs=2)
    assert first.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


# --- one-line refusals --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1])
def test_hidden_factor_below_one_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError) as info:
        ConceptAutoencoderConfig(hidden_factor=value)
    assert str(info.value) == (f"sae.hidden_factor={value} must be a positive integer "
                               "(hidden width = hidden_factor x d_sae)")


def test_l1_coefficient_below_zero_is_refused():
    with pytest.raises(ConfigError, match=r"^sae\.l1_coefficient=-0\.1 must be >= 0$"):
        ConceptAutoencoderConfig(l1_coefficient=-0.1)


def test_train_cycle_config_refuses_the_concept_autoencoder_in_one_line(tmp_path):
    parse_config(compose_cfg(tmp_path))  # the same config with its own SAE is fine
    with pytest.raises(ConfigError) as info:
        parse_config(compose_cfg(tmp_path, ["sae=concept_autoencoder"]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sae=concept_autoencoder has no linear decoder, so no latent has a decoder direction")
    assert "scripts/transfer_concept.py" in message and "sae=relu" in message


def test_train_cycle_config_names_a_bad_hidden_factor_first(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(compose_cfg(tmp_path, ["sae=concept_autoencoder", "sae.hidden_factor=0"]))
    assert str(info.value).startswith("sae.hidden_factor=0 must be a positive integer")
