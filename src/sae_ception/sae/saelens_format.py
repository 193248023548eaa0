"""SAEs in SAELens's folder format, both ways: `cfg.json` + `sae_weights.safetensors` (SAELens >= 6 layout).

SAELens's inference SAEs (sae_lens/saes/standard_sae.py, topk_sae.py, jumprelu_sae.py; x raw, [B, d_in]):

    pre   = (x − a·b_dec) @ W_enc + b_enc          W_enc [d_in, d_sae], a = cfg.apply_b_dec_to_input ∈ {0, 1}
    codes = ReLU(pre)                              architecture standard
          = ReLU of the k largest of pre, 0 else   architecture topk (optionally pre·‖W_dec[f]‖, see below)
          = ReLU(pre) · [pre > threshold]          architecture jumprelu, threshold [d_sae]
    recon = codes @ W_dec + b_dec                  W_dec [d_sae, d_in]

This product's SAEs (sae/base.py) read normalised inputs x_n = (x − shift) / scale (per-dim buffers; the
identity for `normalize: none`): pre = (x_n − b_dec) @ W_enc + b_enc (paper_relu: x_n @ W_enc + b_enc) and
recon = (codes @ W_dec + b_dec) · scale + shift. Export folds the normalisation into the weights so SAELens's
`encode`/`decode` on raw activations give exactly this product's codes and reconstructions:

    W_enc' = W_enc / scale[:, None]     b_dec' = b_dec · scale + shift     W_dec' = W_dec · scale[None, :]
    b_enc' = b_enc                                  (a = 1: (x − b_dec') / scale = x_n − b_dec)
    b_enc' = b_enc − (shift / scale) @ W_enc         (paper_relu, a = 0)

Codes keep their units, so with scale ≠ 1 the decoder rows are not unit-norm in the raw space (each row is
the product's unit row times `scale`); SAELens's `fold_W_dec_norm` would rescale the codes. TopK and JumpReLU
are the same functions in both libraries (a JumpReLU threshold is max(θ, 0) here, and SAELens's
ReLU(pre)·[pre > θ] equals pre·[pre > max(θ, 0)]); BatchTopK's inference rule pre·[pre > max(θ, 0)] is a
JumpReLU whose thresholds are all that one θ.

Import maps standard -> `relu`, topk -> `topk`, jumprelu -> `jumprelu` with `normalize: none`; a = 0 becomes
b_enc + b_dec @ W_enc (this product always subtracts b_dec), and TopK's `rescale_acts_by_decoder_norm`
(pre·n_f with n_f = ‖W_dec[f]‖, decoded as codes / n_f) is folded as W_enc·n, b_enc·n, W_dec / n, which gives
the same codes; a zero decoder row (n_f = 0: SAELens's pre·0 makes that code always 0) gets a zero encoder
column and bias and keeps its zero row, never 0/0. Configs written before SAELens 6 are read with the renames
of SAELens's `handle_pre_6_0_config` (loading/pretrained_sae_loaders.py). Refused, one line each naming the
file: other architectures (gated, transcoders, ...), `normalize_activations` other than none (layer_norm is
per example, so not a fixed affine map; expected_average_only_in needs a scale factor the folder does not
carry), any field read from cfg.json of the wrong type or range, a damaged or truncated weights file, weights
that are missing, not float, of the wrong shape or not finite, and folded weights that overflow float32.
SAELens itself is not imported here: it is only a test dependency.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import save_file
from torch import Tensor

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.sae.base import SparseAutoencoder, build_sae, load_sae
from sae_ception.sae.registry import SAE_TYPES
from sae_ception.utils.io import (atomic_dir, checkpoint_exists, load_state_strict, load_tensors, non_finite_tensor,
                                  read_json, META_FILE, WEIGHTS_FILE)

SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens config format this module writes (metadata.sae_lens_version): SAELens reads a folder whose version
# is below 6.0.0-rc.0, or missing, as a pre-6 config and converts it; 6.0.0 makes it read the folder as it is.
FORMAT_VERSION = "6.0.0"
# cfg.json's `dtype` values SAELens accepts (sae_lens/constants.py DTYPE_MAP) and the safetensors dtypes read here
SAELENS_DTYPES = ("float32", "float64", "float16", "bfloat16", "torch.float32", "torch.float64", "torch.float16",
                  "torch.bfloat16")
WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ExportSpec:
    architecture: str  # SAELens architecture written
    subtracts_b_dec: bool  # the product's encoder reads x_n − b_dec (else x_n itself: paper_relu)


EXPORT_SPECS = {
    "relu": ExportSpec("standard", True),
    "paper_relu": ExportSpec("standard", False),
    "topk": ExportSpec("topk", True),
    "batchtopk": ExportSpec("jumprelu", True),
    "jumprelu": ExportSpec("jumprelu", True),
}
IMPORT_TYPES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}  # SAELens architecture -> sae.type
EXPECTED_FILES = (f"{META_FILE} + {WEIGHTS_FILE} (an SAE-ception SAE checkpoint) or {SAELENS_CFG_FILE} + "
                  f"{SAELENS_WEIGHTS_FILE} (a SAELens SAE)")


# --- which kind of folder ---------------------------------------------------------------------------------
def is_saelens_folder(path: Union[str, Path]) -> bool:
    """Whether `path` holds SAELens's two files (cfg.json + sae_weights.safetensors)."""
    path = Path(path)
    return (path / SAELENS_CFG_FILE).is_file() and (path / SAELENS_WEIGHTS_FILE).is_file()


def sae_folder_format(path: Union[str, Path]) -> str:
    """"sae-ception" for this product's SAE checkpoint folder, "saelens" for a SAELens folder. ArtifactError
    (one line saying which files are expected) for a missing path or a folder that is neither."""
    path = Path(path)
    if checkpoint_exists(path):
        return "sae-ception"
    if is_saelens_folder(path):
        return "saelens"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; give a folder holding {EXPECTED_FILES}")
    raise ArtifactError(f"{path} is not an SAE folder: it needs {EXPECTED_FILES}")


def load_any_sae(path: Union[str, Path]) -> SparseAutoencoder:
    """The SAE in `path`, on the CPU in eval mode: this product's checkpoint (`load_sae`) or a SAELens folder
    (`read_saelens_folder`). Raises ArtifactError for a folder that is neither, damaged or unsupported."""
    if sae_folder_format(path) == "saelens":
        return read_saelens_folder(path)
    return load_sae(path)


# --- export -------------------------------------------------------------------------------------------------
def _normalization(sae: SparseAutoencoder) -> tuple[Tensor, Tensor]:
    """(shift_D, scale_D) in float64 as `sae.normalize` applies them (the identity for normalize: none)."""
    if sae.cfg.normalize == "none":
        return torch.zeros(sae.d_in, dtype=torch.float64), torch.ones(sae.d_in, dtype=torch.float64)
    return sae.norm_shift_D.detach().cpu().double(), sae.norm_scale_D.detach().cpu().double()


def _vector_times_matrix(v_D: Tensor, W_DF: Tensor, columns: int = 4096) -> Tensor:
    """v @ W in float64, a block of columns at a time (never a float64 copy of the whole matrix)."""
    return torch.cat([v_D @ W_DF[:, i:i + columns].double() for i in range(0, W_DF.shape[1], columns)])


def export_spec(sae: SparseAutoencoder) -> ExportSpec:
    """How `sae`'s type is written; ConfigError naming the supported types for any other."""
    if sae.registry_name not in EXPORT_SPECS:
        raise ConfigError(f"an SAE of type {sae.registry_name!r} cannot be written as a SAELens SAE; "
                          f"supported types: {', '.join(EXPORT_SPECS)}")
    return EXPORT_SPECS[sae.registry_name]


@torch.no_grad()
def saelens_tensors(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """SAELens's float32 weights for `sae` (formulas in the module docstring): W_enc [d_in, d_sae],
    W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], and for a jumprelu architecture threshold [d_sae].
    Vectors are folded in float64; each matrix entry is one correctly rounded float32 product or quotient."""
    spec = export_spec(sae)
    shift_D, scale_D = _normalization(sae)
    W_enc_DF, W_dec_FD = sae.W_enc_DF.detach().cpu().float(), sae.W_dec_FD.detach().cpu().float()
    b_enc_F, b_dec_D = sae.b_enc_F.detach().cpu().double(), sae.b_dec_D.detach().cpu().double()
    if not spec.subtracts_b_dec:
        b_enc_F = b_enc_F - _vector_times_matrix(shift_D / scale_D, W_enc_DF)
    tensors = {
        "W_enc": W_enc_DF / scale_D.float()[:, None],
        "W_dec": W_dec_FD * scale_D.float()[None, :],
        "b_enc": b_enc_F.float(),
        "b_dec": (b_dec_D * scale_D + shift_D).float(),
    }
    if sae.registry_name == "jumprelu":
        tensors["threshold"] = sae.threshold_F.detach().cpu().float()
    elif sae.registry_name == "batchtopk":
        tensors["threshold"] = torch.full((sae.d_sae,), max(float(sae.threshold), 0.0))
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def saelens_config(sae: SparseAutoencoder, metadata: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """SAELens's cfg.json for `sae` (SAELens >= 6 fields). `metadata` (model_name, hook_name, ...) is stored under
    `metadata` with sae_lens_version = FORMAT_VERSION (so no pre-6 conversion runs) and
    sae_lens_training_version null (SAELens did not train it, as its own converters record)."""
    spec = export_spec(sae)
    cfg: dict[str, Any] = {
        "architecture": spec.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": spec.subtracts_b_dec, "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if spec.architecture == "topk":
        cfg.update(k=int(sae.cfg.k), rescale_acts_by_decoder_norm=False)
    cfg["metadata"] = {**(metadata or {}), "sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None}
    return cfg


def write_saelens_folder(sae: SparseAutoencoder, folder: Union[str, Path],
                         metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write `sae` as a SAELens folder at `folder` (cfg.json + sae_weights.safetensors), atomically: the folder
    appears complete or not at all, and replaces whatever was there. ConfigError for a type SAELens has no
    architecture for; ArtifactError for non-finite weights."""
    tensors = saelens_tensors(sae)
    bad = non_finite_tensor(tensors)
    if bad is not None:
        raise ArtifactError(f"not writing {folder}: the SAE's {bad} holds NaN or inf")
    cfg = saelens_config(sae, metadata)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / SAELENS_CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# --- import -------------------------------------------------------------------------------------------------
def _major_version(version: Any) -> Optional[int]:
    match = re.match(r"\s*v?(\d+)", str(version)) if version else None
    return int(match.group(1)) if match else None


def _bad_field(where: str, key: str, value: Any, need: str) -> ArtifactError:
    """One line naming the file, the field, its value (cut short) and what it must be."""
    shown = repr(value)
    return ArtifactError(f"{where}: {key}={shown if len(shown) <= 80 else shown[:77] + '...'} {need}")


def _check_type(cfg: dict[str, Any], key: str, where: str, kinds: tuple, need: str, required: bool = False) -> None:
    """ArtifactError unless cfg[key] is one of `kinds` (a bool is not an int), or absent when not required."""
    if key not in cfg:
        if required:
            raise ArtifactError(f"{where}: {key} is missing; it {need}")
        return
    value = cfg[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _bad_field(where, key, value, need)


def _pre_6_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """A config written before SAELens 6 in the 6 layout, as SAELens's handle_pre_6_0_config reads it: keys
    hook_point / hook_point_head_index / activation_fn_str renamed, architecture standard unless the activation
    is topk with activation_fn_kwargs.k, a boolean normalize_activations as none / expected_average_only_in."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
    new = {renames.get(key, key): value for key, value in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    for key, kinds, need in (("activation_fn", (str, type(None)), "must be a string (relu or topk)"),
                             ("activation_fn_kwargs", (dict, type(None)), "must be a JSON object (e.g. {\"k\": 32})"),
                             ("normalize_activations", (bool, str, type(None)), "must be true, false or a string")):
        _check_type(new, key, where, kinds, need)
    activation = new.get("activation_fn") or "relu"
    k = (new.get("activation_fn_kwargs") or {}).get("k")
    if activation == "topk" and k is not None:
        new["architecture"], new["k"] = "topk", k
    elif activation != "relu":
        raise ArtifactError(f"{where}: activation_fn {activation!r} is not supported; supported: relu, "
                            "topk (with activation_fn_kwargs.k)")
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    new["metadata"] = {key: new[key] for key in ("model_name", "hook_name", "hook_head_index") if key in new}
    return new


def read_saelens_config(folder: Union[str, Path]) -> dict[str, Any]:
    """The folder's cfg.json in the SAELens 6 layout (pre-6 configs converted), checked to describe an SAE this
    product can run: every field read here has the type SAELens gives it (d_in, d_sae positive integers, k an
    integer in 1..d_sae, booleans, strings, metadata an object, a dtype SAELens knows). ArtifactError, one line
    naming the file, the field, the value and what it must be, otherwise."""
    path = Path(folder) / SAELENS_CFG_FILE
    where = str(path)
    cfg = read_json(path, remedy="give a SAELens SAE folder")
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path} is damaged (not a JSON object); give a SAELens SAE folder")
    _check_type(cfg, "metadata", where, (dict, type(None)), "must be a JSON object")
    _check_type(cfg, "sae_lens_version", where, (str, type(None)), "must be a version string (e.g. \"6.0.0\")")
    _check_type(cfg.get("metadata") or {}, "sae_lens_version", where, (str, type(None)),
                "must be a version string (e.g. \"6.0.0\") (in metadata)")
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if _major_version(version) is None or _major_version(version) < 6:
        cfg = _pre_6_config(cfg, where)
    _check_type(cfg, "architecture", where, (str,), f"must be a string, one of {', '.join(IMPORT_TYPES)}", required=True)
    architecture = cfg["architecture"]
    if architecture not in IMPORT_TYPES:
        raise ArtifactError(f"{path}: SAELens architecture {architecture!r} is not supported; supported: "
                            f"{', '.join(IMPORT_TYPES)}")
    _check_type(cfg, "normalize_activations", where, (str, type(None)), "must be a string (none)")
    normalization = cfg.get("normalize_activations") or "none"
    if normalization != "none":
        raise ArtifactError(f"{path}: normalize_activations={normalization!r} is not supported (only 'none': layer_norm "
                            "normalises each example on its own, and expected_average_only_in needs a scale factor the "
                            "folder does not hold); fold the normalisation into the weights first")
    for key in ("d_in", "d_sae") + (("k",) if architecture == "topk" else ()):
        _check_type(cfg, key, where, (int,), "must be a positive integer", required=True)
        if cfg[key] <= 0:
            raise _bad_field(where, key, cfg[key], "must be a positive integer")
    if architecture == "topk" and cfg["k"] > cfg["d_sae"]:
        raise _bad_field(where, "k", cfg["k"], f"must be at most d_sae={cfg['d_sae']} (1 <= k <= d_sae)")
    _check_type(cfg, "apply_b_dec_to_input", where, (bool,), "must be true or false")
    if architecture == "topk":
        _check_type(cfg, "rescale_acts_by_decoder_norm", where, (bool,), "must be true or false")
    _check_type(cfg, "dtype", where, (str,), f"must be a string, one of {', '.join(SAELENS_DTYPES)}")
    if "dtype" in cfg and cfg["dtype"] not in SAELENS_DTYPES:
        raise _bad_field(where, "dtype", cfg["dtype"], f"is not a dtype SAELens knows; one of {', '.join(SAELENS_DTYPES)}")
    for key in ("model_name", "hook_name"):
        _check_type(cfg.get("metadata") or {}, key, where, (str, type(None)), "must be a string (in metadata)")
    return cfg


def _saelens_weights(folder: Path, cfg: dict[str, Any]) -> dict[str, Tensor]:
    """The folder's weights in float32, checked against `cfg`: a readable file (a truncated or corrupt one is
    refused), the keys of its architecture (an older `log_threshold` read as exp of it, an all-ones
    `scaling_factor` dropped, as SAELens does), a float dtype, their shapes, finite values."""
    path = folder / SAELENS_WEIGHTS_FILE
    raw = load_tensors(path, remedy="give a SAELens SAE folder")
    for name, tensor in raw.items():
        if tensor.dtype not in WEIGHT_DTYPES:
            raise ArtifactError(f"{path}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; SAELens weights "
                                "are float32, float64, float16 or bfloat16")
    weights = {name: tensor.float() for name, tensor in raw.items()}
    if "log_threshold" in weights and "threshold" not in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    if "scaling_factor" in weights and torch.equal(weights["scaling_factor"], torch.ones_like(weights["scaling_factor"])):
        del weights["scaling_factor"]
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if cfg["architecture"] == "jumprelu":
        shapes["threshold"] = (d_sae,)
    missing, unexpected = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or unexpected:
        raise ArtifactError(f"{path} does not fit a {cfg['architecture']} SAE (missing {missing}, unexpected "
                            f"{unexpected}); expected {', '.join(shapes)}")
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise ArtifactError(f"{path}: {name} has shape {tuple(weights[name].shape)} but cfg.json (d_in={d_in}, "
                                f"d_sae={d_sae}) needs {shape}")
    bad = non_finite_tensor(weights)
    if bad is not None:
        stored = raw.get(bad, raw.get("log_threshold"))
        widened = stored is not None and stored.dtype == torch.float64 and bool(torch.isfinite(stored).all())
        raise ArtifactError(f"{path}: {bad} holds NaN or inf" + (" once read as float32 (its float64 values overflow)"
                                                                 if widened else ""))
    return weights


def _rescale_by_decoder_norm(W_enc_DF: Tensor, b_enc_F: Tensor, W_dec_FD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TopK's rescale_acts_by_decoder_norm folded in: SAELens encodes pre·n_f (n_f = ‖W_dec[f]‖) and decodes
    codes / n_f, which equals encoding with W_enc·n, b_enc·n and decoding with W_dec / n. A latent whose decoder
    row is zero has pre·0 = 0 in SAELens, so its code is always 0: its encoder column and bias become 0 (as the
    product does) and its decoder row stays 0 (SAELens's own decode gives NaN there: 0 · 1/0)."""
    norms_F = W_dec_FD.norm(dim=-1)
    divisor_F = torch.where(norms_F > 0, norms_F, torch.ones_like(norms_F))
    return W_enc_DF * norms_F, b_enc_F * norms_F.double(), W_dec_FD / divisor_F[:, None]


@torch.no_grad()
def read_saelens_folder(folder: Union[str, Path]) -> SparseAutoencoder:
    """A SAELens SAE folder as this product's SAE (type `IMPORT_TYPES[architecture]`, normalize none), on the CPU
    in eval mode, whose `encode`/`decode` equal SAELens's on raw activations [B, d_in]. Weights in any float
    dtype are read as float32. Leaves the global random generator as it was. ArtifactError for an unsupported
    or damaged folder (see `read_saelens_config`, `_saelens_weights`)."""
    folder = Path(folder)
    cfg = read_saelens_config(folder)
    w = _saelens_weights(folder, cfg)
    architecture, d_in = cfg["architecture"], cfg["d_in"]
    b_enc_F = w["b_enc"].double()
    if not cfg.get("apply_b_dec_to_input", True):  # x @ W + b  =  (x − b_dec) @ W + (b + b_dec @ W)
        b_enc_F = b_enc_F + _vector_times_matrix(w["b_dec"].double(), w["W_enc"])
    W_enc_DF, W_dec_FD = w["W_enc"], w["W_dec"]
    folded = []
    if not cfg.get("apply_b_dec_to_input", True):
        folded.append("apply_b_dec_to_input: false")
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        W_enc_DF, b_enc_F, W_dec_FD = _rescale_by_decoder_norm(W_enc_DF, b_enc_F, W_dec_FD)
        folded.append("rescale_acts_by_decoder_norm")
    settings: dict[str, Any] = {"d_sae": cfg["d_sae"], "normalize": "none"}
    if architecture == "topk":
        settings["k"] = cfg["k"]
    elif architecture == "standard":
        unit = torch.allclose(W_dec_FD.norm(dim=-1), torch.ones(cfg["d_sae"]), atol=1e-4)
        settings["decoder_norm"] = "unit" if unit else "free"  # only training reads it; a free decoder is not renormalised
    sae_type = IMPORT_TYPES[architecture]
    try:
        with torch.random.fork_rng(devices=[]):  # building draws a random start, overwritten below
            sae = build_sae(SAE_TYPES.get(sae_type).config_class(type=sae_type, **settings), d_in)
    except ConfigError as ex:
        raise ArtifactError(f"{folder / SAELENS_CFG_FILE} does not describe an SAE this product can run ({ex})") from None
    state = {"W_enc_DF": W_enc_DF, "W_dec_FD": W_dec_FD, "b_enc_F": b_enc_F.float(), "b_dec_D": w["b_dec"],
             "norm_shift_D": torch.zeros(d_in), "norm_scale_D": torch.ones(d_in)}
    bad = non_finite_tensor(state)
    if bad is not None:  # the folder's own weights are finite: folding overflowed float32
        raise ArtifactError(f"{folder / SAELENS_WEIGHTS_FILE}: folding {' and '.join(folded)} into the weights makes "
                            f"{bad.rsplit('_', 1)[0]} overflow float32 (inf or NaN); this SAE cannot be run in float32")
    if architecture == "jumprelu":
        state["threshold_param_F"] = w["threshold"]
    load_state_strict(sae, {k: v.contiguous() for k, v in state.items()}, str(folder), "SAELens folder")
    return sae.eval()


def saelens_description(folder: Union[str, Path]) -> str:
    """`SAELens standard SAE 768 -> 24576 (model gpt2, hook blocks.8.hook_resid_pre)` for log lines."""
    cfg = read_saelens_config(folder)
    meta = cfg.get("metadata") or {}
    source = ", ".join(f"{key.split('_')[0]} {meta[key]}" for key in ("model_name", "hook_name") if meta.get(key))
    return f"SAELens {cfg['architecture']} SAE {cfg['d_in']} -> {cfg['d_sae']}" + (f" ({source})" if source else "")
