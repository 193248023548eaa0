"""SAELens's folder format both ways, checked against the real library: an exported SAE loads with
`sae_lens.SAE.load_from_disk` and gives this product's codes and reconstructions on raw activations, and a
folder SAELens saved (its own 6.x layout, an older pre-6 config, bfloat16 weights) loads here with SAELens's codes."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from sae_lens import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, SAE, StandardSAE, StandardSAEConfig,
                      TopKSAE, TopKSAEConfig)
from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

from sae_ception.errors import ArtifactError
from sae_ception.sae import load_any_sae, read_saelens_folder, write_saelens_folder
from sae_ception.sae.saelens_format import FORMAT_VERSION, sae_folder_format
from tests.sae.helpers import make_sae, sparse_data

D_IN = 16


def raw_activations(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative rows with an offset and unequal per-dim scales, so every normalisation is far from
    the identity."""
    gen = torch.Generator().manual_seed(seed + 1)
    return sparse_data(n, D_IN, seed=seed) * (torch.rand(D_IN, generator=gen) * 4 + 0.5) + torch.randn(D_IN, generator=gen)


def trained_like(sae_type: str, normalize: str, **overrides):
    """A product SAE fitted to the data, then perturbed so no term is trivial: biases, per-dim normalisation
    buffers, decoder row norms (free decoders), thresholds that cut some codes (JumpReLU), a fitted BatchTopK
    threshold."""
    x = raw_activations()
    sae = make_sae(sae_type, d_in=D_IN, normalize=normalize, **overrides)
    sae.set_normalization(x)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        sae.b_enc_F.add_(0.2 * torch.randn(sae.d_sae, generator=gen))
        sae.b_dec_D.add_(0.2 * torch.randn(D_IN, generator=gen))
        if normalize != "none":
            sae.norm_scale_D.mul_(torch.rand(D_IN, generator=gen) + 0.5)
            sae.norm_shift_D.add_(0.3 * torch.randn(D_IN, generator=gen))
        if not sae.unit_decoder_rows or getattr(sae.cfg, "decoder_norm", "unit") == "free":
            sae.W_dec_FD.mul_(torch.rand(sae.d_sae, 1, generator=gen) + 0.3)
        if sae_type == "jumprelu":
            pre = sae.pre_activation(sae.normalize(x))
            sae.threshold_param_F.copy_(pre.quantile(0.7, dim=0) + 0.01 * torch.randn(sae.d_sae, generator=gen))
            sae.threshold_param_F[:3] = -0.5  # negative thresholds act as 0 in both libraries
    sae.finish_training_(x if sae_type == "batchtopk" else None)
    return sae.eval(), x


def assert_same_codes(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, float(ours.abs().max()))
    torch.testing.assert_close(theirs, ours, atol=2e-5 * scale, rtol=1e-5)
    assert torch.equal(ours != 0, theirs != 0), "the same latents must fire"


def load_quietly(folder, **kwargs):
    """SAELens's load_from_disk, failing on any warning it emits (e.g. a legacy-config conversion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return SAE.load_from_disk(str(folder), **kwargs)


VARIANTS = {
    "relu_unit": ("relu", {}),
    "relu_free": ("relu", {"decoder_norm": "free", "decoder_init_norm": 0.1}),
    "topk": ("topk", {}),
    "batchtopk": ("batchtopk", {}),
    "jumprelu": ("jumprelu", {}),
    "paper_relu": ("paper_relu", {}),
}
ARCHITECTURES = {"relu": StandardSAE, "paper_relu": StandardSAE, "topk": TopKSAE, "batchtopk": JumpReLUSAE,
                 "jumprelu": JumpReLUSAE}


@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_gives_this_products_codes_and_reconstructions_in_saelens(tmp_path, variant, normalize):
    sae_type, overrides = VARIANTS[variant]
    sae, x = trained_like(sae_type, normalize, **overrides)
    folder = write_saelens_folder(sae, tmp_path / "export", {"model_name": "mlp", "hook_name": "blocks.1"})

    theirs = load_quietly(folder)
    assert type(theirs) is ARCHITECTURES[sae_type]
    with torch.no_grad():
        codes, their_codes = sae.encode(x), theirs.encode(x)
        assert_same_codes(codes, their_codes)
        l0 = (codes != 0).sum(-1)
        assert torch.equal(l0, (their_codes != 0).sum(-1)) and 0 < l0.float().mean() < sae.d_sae
        recon = sae.decode(codes)
        torch.testing.assert_close(theirs.decode(codes), recon, atol=2e-5 * float(x.abs().max()), rtol=1e-5)

    cfg = json.loads((folder / "cfg.json").read_text())
    assert handle_config_defaulting(dict(cfg)) == cfg, "a 6.x config: SAELens must not convert it"
    assert cfg["metadata"]["sae_lens_version"] == FORMAT_VERSION and theirs.cfg.metadata.hook_name == "blocks.1"


def test_batchtopk_exports_its_single_threshold(tmp_path):
    sae, _ = trained_like("batchtopk", "scale")
    assert float(sae.threshold) > 0
    theirs = load_quietly(write_saelens_folder(sae, tmp_path / "export"))
    assert torch.equal(theirs.threshold.detach(), torch.full((sae.d_sae,), float(sae.threshold)))


def test_an_export_reads_back_as_the_same_function(tmp_path):
    """Export then import: a paper_relu (no b_dec before its encoder, standardised inputs) comes back as a relu
    SAE with normalize none and the same codes and reconstructions."""
    sae, x = trained_like("paper_relu", "standardize")
    back = load_any_sae(write_saelens_folder(sae, tmp_path / "export"))
    assert back.registry_name == "relu" and back.cfg.normalize == "none" and back.cfg.decoder_norm == "free"
    with torch.no_grad():
        assert_same_codes(sae.encode(x), back.encode(x))
        torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(sae.encode(x)), atol=1e-4, rtol=1e-5)


# --- folders SAELens wrote ----------------------------------------------------------------------------------
def random_saelens(cls, cfg, seed: int = 0):
    """A SAELens SAE with random weights: biases, decoder row norms and (JumpReLU) thresholds all non-trivial."""
    torch.manual_seed(seed)
    sae = cls(cfg)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if name.startswith("b_") else 1.0))
        sae.W_dec.mul_(torch.rand(cfg.d_sae, 1) + 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(cfg.d_sae) * 2 - 0.3)
    return sae


SAELENS_CASES = {
    "standard": (StandardSAE, lambda: StandardSAEConfig(d_in=D_IN, d_sae=48), "relu"),
    "standard_no_b_dec_input": (StandardSAE, lambda: StandardSAEConfig(d_in=D_IN, d_sae=48, apply_b_dec_to_input=False), "relu"),
    "topk": (TopKSAE, lambda: TopKSAEConfig(d_in=D_IN, d_sae=48, k=5), "topk"),
    "topk_rescaled": (TopKSAE, lambda: TopKSAEConfig(d_in=D_IN, d_sae=48, k=5, rescale_acts_by_decoder_norm=True), "topk"),
    "jumprelu": (JumpReLUSAE, lambda: JumpReLUSAEConfig(d_in=D_IN, d_sae=48), "jumprelu"),
    "jumprelu_bfloat16": (JumpReLUSAE, lambda: JumpReLUSAEConfig(d_in=D_IN, d_sae=48, dtype="bfloat16"), "jumprelu"),
}


@pytest.mark.parametrize("case", list(SAELENS_CASES))
def test_a_folder_saelens_saved_loads_with_saelens_codes(tmp_path, case):
    cls, make_cfg, product_type = SAELENS_CASES[case]
    random_saelens(cls, make_cfg()).save_model(tmp_path / "theirs")
    theirs = load_quietly(tmp_path / "theirs", dtype="float32")  # bfloat16 on disk: compare in float32, as read here
    ours = load_any_sae(tmp_path / "theirs")
    assert sae_folder_format(tmp_path / "theirs") == "saelens"
    assert ours.registry_name == product_type and ours.cfg.normalize == "none" and not ours.training
    assert ours.W_enc_DF.dtype == torch.float32
    x = raw_activations()
    with torch.no_grad():
        codes = ours.encode(x)
        assert_same_codes(codes, theirs.encode(x))
        assert 0 < (codes != 0).sum(-1).float().mean() < ours.d_sae
        torch.testing.assert_close(ours.decode(codes), theirs.decode(codes), atol=1e-4, rtol=1e-5)


def test_an_imported_folder_is_saved_and_reloaded_in_this_products_format(tmp_path):
    random_saelens(TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=48, k=5)).save_model(tmp_path / "theirs")
    ours = read_saelens_folder(tmp_path / "theirs")
    ours.save(tmp_path / "ours", extra={"format": "saelens"})
    again = load_any_sae(tmp_path / "ours")
    assert sae_folder_format(tmp_path / "ours") == "sae-ception" and again.cfg.k == 5
    x = raw_activations()
    assert torch.equal(again.encode(x), ours.encode(x))


def write_pre_6_folder(folder, cfg: dict, sae) -> None:
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("activation,architecture", [("relu", "standard"), ("topk", "topk")])
def test_a_pre_6_config_reads_as_saelens_reads_it(tmp_path, activation, architecture):
    """A cfg.json from SAELens < 6 (hook_point, activation_fn_str, activation_fn_kwargs.k, a boolean
    normalize_activations, no sae_lens_version): SAELens converts it, and so does this product."""
    cls, cfg = (StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=40)) if activation == "relu" else \
        (TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=40, k=4))
    old = {"d_in": D_IN, "d_sae": 40, "dtype": "float32", "device": "cpu", "model_name": "gpt2-small",
           "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3, "activation_fn_str": activation,
           "normalize_activations": False, "apply_b_dec_to_input": True}
    if activation == "topk":
        old["activation_fn_kwargs"] = {"k": 4}
    write_pre_6_folder(tmp_path / "old", old, random_saelens(cls, cfg))
    theirs, ours = SAE.load_from_disk(str(tmp_path / "old")), load_any_sae(tmp_path / "old")
    assert theirs.cfg.architecture() == architecture and ours.registry_name == {"standard": "relu"}.get(architecture, architecture)
    x = raw_activations()
    with torch.no_grad():
        assert_same_codes(ours.encode(x), theirs.encode(x))


# --- refusals: one line naming the folder, the value and what is supported -----------------------------------
def one_line_error(path, match: str) -> str:
    with pytest.raises(ArtifactError) as info:
        load_any_sae(path)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


def test_layer_norm_inputs_are_refused(tmp_path):
    random_saelens(StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=32, normalize_activations="layer_norm")).save_model(tmp_path / "ln")
    message = one_line_error(tmp_path / "ln", "normalize_activations='layer_norm' is not supported")
    assert str(tmp_path / "ln" / "cfg.json") in message


def test_an_unknown_architecture_is_refused(tmp_path):
    random_saelens(GatedSAE, GatedSAEConfig(d_in=D_IN, d_sae=32)).save_model(tmp_path / "gated")
    one_line_error(tmp_path / "gated", "architecture 'gated' is not supported; supported: standard, topk, jumprelu")


def test_an_unknown_pre_6_activation_is_refused(tmp_path):
    old = {"d_in": D_IN, "d_sae": 32, "dtype": "float32", "activation_fn_str": "tanh-relu"}
    write_pre_6_folder(tmp_path / "old", old, random_saelens(StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=32)))
    one_line_error(tmp_path / "old", "activation_fn 'tanh-relu' is not supported")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    random_saelens(StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=32)).save_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 33}))
    one_line_error(tmp_path / "sae", "W_enc has shape (16, 32) but cfg.json (d_in=16, d_sae=33) needs (16, 33)")


def test_a_missing_or_foreign_folder_names_the_files_expected(tmp_path):
    one_line_error(tmp_path / "nowhere", "does not exist; give a folder holding config.json + weights.safetensors")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cfg.json").write_text("{}")
    one_line_error(tmp_path / "other", "is not an SAE folder: it needs config.json + weights.safetensors (an SAE-ception "
                                       "SAE checkpoint) or cfg.json + sae_weights.safetensors (a SAELens SAE)")



# --- malformed folders: every field and tensor read is checked, each fault one line ----------------------------
def saelens_topk_folder(folder, **cfg_changes):
    """A SAELens TopK folder (d_in 16, d_sae 48, k 5) with cfg.json fields replaced (None removes a field)."""
    random_saelens(TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=48, k=5)).save_model(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in cfg_changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


PRE_6 = {"d_in": D_IN, "d_sae": 48, "dtype": "float32", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
         "hook_point": "blocks.0.hook_resid_pre", "model_name": "gpt2"}

MALFORMED_CONFIGS = {  # cfg.json changes -> the words the one line must hold
    "metadata_a_string": ({"metadata": "x"}, "metadata='x' must be a JSON object"),
    "metadata_a_list": ({"metadata": ["x"]}, "metadata=['x'] must be a JSON object"),
    "version_a_number": ({"metadata": {"sae_lens_version": 6}}, "sae_lens_version=6 must be a version string"),
    "architecture_a_list": ({"architecture": ["topk"]}, "architecture=['topk'] must be a string, one of standard, topk"),
    "architecture_missing": ({"architecture": None}, "architecture is missing"),
    "d_in_a_string": ({"d_in": "16"}, "d_in='16' must be a positive integer"),
    "d_in_a_float": ({"d_in": 16.0}, "d_in=16.0 must be a positive integer"),
    "d_in_a_boolean": ({"d_in": True}, "d_in=True must be a positive integer"),
    "d_in_negative": ({"d_in": -16}, "d_in=-16 must be a positive integer"),
    "d_sae_zero": ({"d_sae": 0}, "d_sae=0 must be a positive integer"),
    "d_sae_missing": ({"d_sae": None}, "d_sae is missing; it must be a positive integer"),
    "k_zero": ({"k": 0}, "k=0 must be a positive integer"),
    "k_above_d_sae": ({"k": 49}, "k=49 must be at most d_sae=48 (1 <= k <= d_sae)"),
    "k_a_string": ({"k": "5"}, "k='5' must be a positive integer"),
    "apply_b_dec_a_string": ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input='yes' must be true or false"),
    "apply_b_dec_null": ({"apply_b_dec_to_input": []}, "apply_b_dec_to_input=[] must be true or false"),
    "rescale_a_string": ({"rescale_acts_by_decoder_norm": "true"}, "rescale_acts_by_decoder_norm='true' must be true or false"),
    "dtype_unknown": ({"dtype": "float8"}, "dtype='float8' is not a dtype SAELens knows; one of float32"),
    "dtype_a_number": ({"dtype": 32}, "dtype=32 must be a string"),
    "normalize_a_number": ({"normalize_activations": 5}, "normalize_activations=5 must be a string"),
    "model_name_a_number": ({"metadata": {"sae_lens_version": "6.0.0", "model_name": 5}}, "model_name=5 must be a string"),
    "pre_6_kwargs_a_string": ({**PRE_6, "metadata": None, "activation_fn_kwargs": "k=4"},
                              "activation_fn_kwargs='k=4' must be a JSON object"),
    "pre_6_kwargs_a_list": ({**PRE_6, "metadata": None, "activation_fn_kwargs": [4]}, "activation_fn_kwargs=[4] must be"),
    "pre_6_k_a_string": ({**PRE_6, "metadata": None, "activation_fn_kwargs": {"k": "4"}}, "k='4' must be a positive integer"),
    "pre_6_activation_a_number": ({**PRE_6, "metadata": None, "activation_fn_str": 1}, "activation_fn=1 must be a string"),
    "pre_6_normalize_a_list": ({**PRE_6, "metadata": None, "normalize_activations": []},
                               "normalize_activations=[] must be true, false or a string"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CONFIGS))
def test_a_malformed_cfg_json_is_one_line_naming_the_field(tmp_path, case):
    changes, words = MALFORMED_CONFIGS[case]
    folder = saelens_topk_folder(tmp_path / "sae", **changes)
    if case.startswith("pre_6"):  # a pre-6 config has no 6.x fields
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({key: cfg[key] for key in {**PRE_6, **changes} if key in cfg}))
    message = one_line_error(folder, words)
    assert message.startswith(str(folder / "cfg.json")), message


def corrupt_weights(folder, kind: str) -> None:
    path = folder / "sae_weights.safetensors"
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif kind == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bad_header":
        path.write_bytes(data[:8] + b"{not json" + data[17:])


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "bad_header"])
def test_a_damaged_weights_file_is_one_line(tmp_path, kind):
    folder = saelens_topk_folder(tmp_path / "sae")
    corrupt_weights(folder, kind)
    one_line_error(folder, f"{folder / 'sae_weights.safetensors'} is damaged or truncated")


def rewrite_weights(folder, **changes) -> None:
    from safetensors.torch import load_file
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights.update(changes)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("name,tensor,words", [
    ("W_enc", torch.ones(D_IN, 48, dtype=torch.int32), "W_enc has dtype int32; SAELens weights are float32"),
    ("b_enc", torch.ones(48, dtype=torch.bool), "b_enc has dtype bool"),
    ("b_dec", torch.full((D_IN,), 1e39, dtype=torch.float64), "b_dec holds NaN or inf once read as float32"),
    ("W_dec", torch.full((48, D_IN), float("nan")), "W_dec holds NaN or inf"),
    ("b_enc", torch.ones(47), "b_enc has shape (47,) but cfg.json (d_in=16, d_sae=48) needs (48,)"),
])
def test_weights_of_the_wrong_dtype_shape_or_value_are_one_line(tmp_path, name, tensor, words):
    folder = saelens_topk_folder(tmp_path / "sae")
    rewrite_weights(folder, **{name: tensor})
    one_line_error(folder, words)


# --- TopK's rescale_acts_by_decoder_norm: SAELens's function reproduced, non-finite results refused ------------
def test_a_zero_decoder_row_under_rescaling_gives_saelens_codes_and_finite_weights(tmp_path):
    """SAELens encodes pre·‖W_dec[f]‖: a zero decoder row makes that latent's pre 0, so its code is always 0. The
    import reproduces that exactly (zero encoder column and bias) instead of dividing by the zero norm (NaN)."""
    theirs = random_saelens(TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=48, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        theirs.W_dec[7] = 0
        theirs.b_enc[7] = 50.0  # would win every top-k if it were not multiplied by 0
    theirs.save_model(tmp_path / "theirs")
    ours = load_any_sae(tmp_path / "theirs")
    for name, tensor in ours.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    x = raw_activations()
    with torch.no_grad():
        codes = ours.encode(x)
        assert_same_codes(codes, theirs.encode(x))
        assert (codes[:, 7] == 0).all() and (codes != 0).sum(-1).float().mean() > 4
        alive = torch.arange(48) != 7  # SAELens's own decode is NaN here (0 · 1/0): the intended sum without latent 7
        norms = theirs.W_dec.norm(dim=-1)
        expected = (codes[:, alive] / norms[alive]) @ theirs.W_dec[alive] + theirs.b_dec
        torch.testing.assert_close(ours.decode(codes), expected, atol=1e-4, rtol=1e-5)


def test_rescaling_that_overflows_float32_is_refused_naming_the_tensor(tmp_path):
    theirs = random_saelens(TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=48, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        theirs.W_dec[3] = 1e30
        theirs.W_enc[:, 3] = 1e10  # W_enc · ‖W_dec[3]‖ = 4e40: beyond float32
    theirs.save_model(tmp_path / "theirs")
    one_line_error(tmp_path / "theirs", "sae_weights.safetensors: folding rescale_acts_by_decoder_norm into the weights "
                                         "makes W_enc overflow float32")
