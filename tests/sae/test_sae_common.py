"""Contracts every registered SAE type must meet (new types are picked up from the registry automatically)."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.sae import SAE_TYPES, SAEConfig, SparseAutoencoder, TrainingState, build_sae, load_sae, train_sae
from sae_ception.utils.io import save_checkpoint

from tests.sae.helpers import LINEAR_SAE_TYPES, make_config, make_sae

TYPES = SAE_TYPES.names()
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "sae"


@pytest.mark.parametrize("sae_type", TYPES)
def test_forward_shapes_and_every_parameter_gets_a_gradient(sae_type):
    sae = make_sae(sae_type, d_in=8, d_sae=16)
    sae.set_normalization(torch.randn(256, 8) * 3 + 1)
    x = torch.randn(64, 8)
    some_dead = torch.arange(16) % 2 == 0  # lets variants with dead-latent terms exercise them
    out = sae(x, TrainingState(step=3, dead_F=some_dead))
    assert out.recon.shape == (64, 8) and out.codes_BF.shape == (64, 16)
    assert {"mse", "total"} <= set(out.losses) and all(v.ndim == 0 for v in out.losses.values())
    out.losses["total"].backward()
    for name, param in sae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert {"norm_shift_D", "norm_scale_D"} <= set(dict(sae.named_buffers()))  # variants may keep more state


@pytest.mark.parametrize("sae_type", TYPES)
def test_encode_decode_match_forward(sae_type):
    sae = make_sae(sae_type, normalize="standardize")
    acts = torch.randn(128, 8) * 5 + 2
    sae.set_normalization(acts)
    out = sae(acts)
    assert torch.allclose(sae.encode(acts), out.codes_BF)
    assert torch.allclose(sae.decode(out.codes_BF), out.recon, atol=1e-6)
    assert torch.allclose(out.losses["mse"], (sae.normalize(out.recon) - sae.normalize(acts)).pow(2).mean(), atol=1e-6)


@pytest.mark.parametrize("sae_type", TYPES)
def test_checkpoint_round_trip_is_exact(sae_type, tmp_path):
    sae = make_sae(sae_type, normalize="standardize")
    sae.set_normalization(torch.randn(100, 8) * 2 + 1)
    with torch.no_grad():
        for param in sae.parameters():
            param.add_(torch.randn_like(param))
    sae.save(tmp_path / "sae", extra={"cycle": 2})
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    assert (loaded.d_in, loaded.d_sae) == (8, 32)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sae.state_dict().items())
    x = torch.randn(10, 8)
    assert not loaded.training  # loaded SAEs encode in inference mode (BatchTopK: its threshold)
    sae.eval()
    assert torch.equal(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))
    meta = json.loads((tmp_path / "sae" / "config.json").read_text())
    assert meta["kind"] == "sae" and meta["type"] == sae_type and meta["extra"] == {"cycle": 2}


def test_loading_something_else_fails_clearly(tmp_path):
    save_checkpoint(tmp_path / "m", {"w": torch.zeros(2)}, {"kind": "model", "name": "mlp"})
    with pytest.raises(ArtifactError, match="holds a model checkpoint, not an SAE"):
        load_sae(tmp_path / "m")
    with pytest.raises(ArtifactError, match="not a checkpoint folder"):
        load_sae(tmp_path / "missing")


@pytest.mark.parametrize("sae_type", LINEAR_SAE_TYPES)
def test_decoder_rows_stay_unit_norm_after_a_training_step(sae_type, accelerator):
    sae = make_sae(sae_type, lr=0.1, batch_size=256)
    with torch.no_grad():
        sae.W_dec_FD.mul_(3.0)
    train_sae(sae, torch.randn(256, 8), sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    norms = sae.W_dec_FD.norm(dim=-1)
    if type(sae).unit_decoder_rows:
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    else:  # free decoder rows (the paper's SAE): the step does not renormalise them
        assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)


def test_parallel_decoder_gradient_is_removed():
    sae = make_sae("relu")
    sae.W_dec_FD.grad = torch.randn_like(sae.W_dec_FD)
    sae.remove_parallel_decoder_grad_()
    along_rows = (sae.W_dec_FD.grad * sae.W_dec_FD).sum(-1)
    assert torch.allclose(along_rows, torch.zeros_like(along_rows), atol=1e-6)


@pytest.mark.parametrize("sae_type", TYPES)
@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"d_sae": 0}, r"^sae\.d_sae=0 must be a positive integer"),
        ({"d_sae": -8}, r"^sae\.d_sae=-8 "),
        ({"expansion_factor": 0}, r"^sae\.expansion_factor=0 must be a positive integer$"),
        ({"normalize": "foo"}, r"^sae\.normalize='foo' is not valid; use one of none, scale, standardize$"),
        ({"epochs": -1}, r"^sae\.epochs=-1 must be a positive integer"),
        ({"epochs": 0}, r"^sae\.epochs=0 must be a positive integer"),
        ({"batch_size": 0}, r"^sae\.batch_size=0 "),
        ({"lr": 0.0}, r"^sae\.lr=0\.0 must be > 0$"),
        ({"lr_warmup_steps": -1}, r"^sae\.lr_warmup_steps=-1 "),
        ({"dead_after_examples": 0}, r"^sae\.dead_after_examples=0 "),
        ({"log_every": 0}, r"^sae\.log_every=0 "),
    ],
)
def test_bad_settings_fail_with_one_line_naming_them(sae_type, overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_config(sae_type, **overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sae_type", TYPES)
def test_width_defaults_to_expansion_factor_times_d_in(sae_type):
    sae = build_sae(make_config(sae_type, d_sae=None, expansion_factor=3), d_in=8)
    assert sae.d_sae == 24 and sae.encode(torch.randn(5, 8)).shape == (5, 24)
    if type(sae).linear_decoder:
        assert sae.W_dec_FD.shape == (24, 8) and sae.W_enc_DF.shape == (8, 24)


@pytest.mark.parametrize("sae_type", TYPES)
def test_plain_sae_config_gets_the_variant_defaults(sae_type):
    sae = build_sae(SAEConfig(type=sae_type, d_sae=16), d_in=4)
    assert isinstance(sae, SparseAutoencoder) and isinstance(sae.cfg, SAE_TYPES.get(sae_type).config_class)


def test_unknown_type_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"sae\.type='nope' is not a known SAE type; valid: .*relu"):
        build_sae(SAEConfig(type="nope"), d_in=4)


@pytest.mark.parametrize("sae_type", TYPES)
def test_yaml_config_fits_the_structured_config(sae_type):
    path = CONFIG_DIR / f"{sae_type}.yaml"
    if not path.is_file():
        pytest.skip(f"no {path}")
    cls = SAE_TYPES.get(sae_type).config_class
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.load(path)))
    assert isinstance(cfg, cls) and cfg.type == sae_type
