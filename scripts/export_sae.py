"""Write a run's SAE as a SAELens folder (cfg.json + sae_weights.safetensors), for `sae_lens.SAE.load_from_disk`.

    python scripts/export_sae.py run_dir=outputs/my_run                    # the last cycle that has an SAE
    python scripts/export_sae.py run_dir=outputs/my_run cycle=1 out=exports/sae_1
    python scripts/export_sae.py run_dir=outputs/my_run cycle=1 out=exports/sae_1 overwrite=true

Settings (key=value; not a Hydra app):
    run_dir    the run folder (required)
    cycle      which cycle's SAE (default: the last one that has an SAE)
    out        the folder to write (default: <run_dir>/saelens/sae_cycle_<cycle>); written atomically
    overwrite  true: replace an `out` that is not empty (default: false, which refuses)

The SAE's input normalisation is folded into the weights, so SAELens's encode/decode on raw activations give
this product's codes and reconstructions (sae/saelens_format.py says how). cfg.json's `metadata` records the
model, the module whose output the SAE reads (`hook_name`; `hf_hook_name` inside the Hugging Face model),
and under `sae_ception` the run, the cycle, the pooling and the product's SAE settings. A bad setting, a
missing or damaged file is one line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from sae_ception.cli import LOG_FORMAT, write_error_line
from sae_ception.config_file import read_run_config
from sae_ception.errors import ArtifactError, ConfigError, SAECeptionError
from sae_ception.models import MODELS, build_model
from sae_ception.run import RunLayout
from sae_ception.sae import load_sae
from sae_ception.sae.saelens_format import EXPORT_SPECS, write_saelens_folder
from sae_ception.utils.io import checkpoint_exists

log = logging.getLogger("sae_ception")

SETTINGS = {
    "run_dir": "the run folder",
    "cycle": "the cycle whose SAE is written (default: the last with an SAE)",
    "out": "the folder to write (default: <run_dir>/saelens/sae_cycle_<cycle>)",
    "overwrite": "true|false: replace a non-empty `out` (default false)",
}


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments; ConfigError (one line listing the valid keys) for anything else or a repeated key."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in SETTINGS:
            raise ConfigError(f"{arg!r} is not a setting of export_sae.py; give key=value with key one of "
                              f"{', '.join(SETTINGS)}")
        if key in args:
            raise ConfigError(f"{key} is given twice ({key}={args[key]} and {arg}); give it once")
        args[key] = value
    if not args.get("run_dir"):
        raise ConfigError("run_dir is missing; give run_dir=<a run folder made by scripts/train_cycle.py>")
    return args


def sae_cycles(layout: RunLayout) -> list[int]:
    """The cycles whose SAE checkpoint is in the run folder, in order."""
    found = layout.root.glob("checkpoints/sae_cycle_*")
    return sorted(int(p.name.rsplit("_", 1)[1]) for p in found if p.name.rsplit("_", 1)[1].isdigit() and checkpoint_exists(p))


def choose_cycle(layout: RunLayout, value: Optional[str]) -> int:
    have = sae_cycles(layout)
    if value is None:
        if not have:
            raise ArtifactError(f"run_dir={layout.root} holds no SAE (checkpoints/sae_cycle_N); run scripts/train_cycle.py "
                                "or scripts/train_sae.py first")
        return have[-1]
    if not value.isdigit():
        raise ConfigError(f"cycle={value!r} must be a cycle number (cycles with an SAE: {have or 'none'})")
    if int(value) not in have:
        raise ArtifactError(f"cycle={value}: {layout.root} holds no SAE for cycle {value} (cycles with an SAE: "
                            f"{have or 'none'})")
    return int(value)


def target_description(model_settings: dict[str, Any]) -> dict[str, Any]:
    """Where the SAE's activations come from: the classifier is built from its config on the meta device (no
    weights read, no memory) to name the target module. `hook_name`: its path in the product's classifier
    (its output is read); `hf_hook_name`: its path inside the Hugging Face model, for transformers; `pooling`:
    how tokens become one row per example (None for the MLP)."""
    config_class = MODELS.get(model_settings.get("name", "")).config_class
    try:
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_class), model_settings))
    except Exception as ex:  # noqa: BLE001 - OmegaConf's validation errors, as one line
        raise ArtifactError(f"the run's model settings cannot be read ({' '.join(str(ex).split())[:160]})") from None
    with torch.device("meta"):
        model = build_model(model_cfg, input_dim=1, num_classes=2, pretrained_weights=False)
    names = {id(module): name for name, module in model.named_modules()}
    described = {"hook_name": names[id(model.target_module())], "target_layer": model.target_index,
                 "pooling": getattr(model, "pooling", None)}
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        described["hf_hook_name"] = {id(m): n for n, m in backbone.named_modules()}[id(model.target_module())]
    return described


def export_metadata(run_cfg: dict[str, Any], run_dir: Path, cycle: int, sae) -> dict[str, Any]:
    """cfg.json's `metadata`: SAELens's model_name / hook_name (/ hf_hook_name) and this product's record."""
    model, sae_settings = run_cfg.get("model") or {}, run_cfg.get("sae") or {}
    target = target_description(model)
    token_level = bool(sae_settings.get("token_level", False)) and target["pooling"] is not None
    meta = {"model_name": model.get("pretrained") or model.get("name"), "hook_name": target["hook_name"]}
    if "hf_hook_name" in target:
        meta["hf_hook_name"] = target["hf_hook_name"]
    meta["sae_ception"] = {
        "run_dir": str(run_dir.resolve()), "cycle": cycle, "dataset": (run_cfg.get("dataset") or {}).get("name"),
        "model": {"name": model.get("name"), "pretrained": model.get("pretrained")},
        "target_layer": target["target_layer"], "pooling": target["pooling"], "token_level": token_level,
        "rows": "one per non-padding token" if token_level else "one per example" + (
            f" ({target['pooling']} pooling over tokens)" if target["pooling"] else ""),
        "sae_type": sae.registry_name, "sae_config": asdict(sae.cfg),
        "folded": "the input normalisation is folded into the weights (normalize_activations none)",
    }
    return meta


def choose_out(layout: RunLayout, cycle: int, value: Optional[str], overwrite: bool) -> Path:
    out = Path(value) if value else layout.root / "saelens" / f"sae_cycle_{cycle}"
    if out.is_file():
        raise ConfigError(f"out={out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out={out} exists and is not empty; give another out, or overwrite=true to replace it")
    return out


def export(args: dict[str, str]) -> Path:
    """Check every setting and file, then write the folder. SAECeptionError (one line) before any write."""
    overwrite = args.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        raise ConfigError(f"overwrite={args['overwrite']!r} must be true or false")
    layout = RunLayout(Path(args["run_dir"]))
    if not layout.root.is_dir():
        raise ArtifactError(f"run_dir={layout.root} does not exist; give a run folder made by scripts/train_cycle.py")
    if not layout.config.is_file():
        raise ArtifactError(f"run_dir={layout.root} holds no config.yaml; give a run folder made by scripts/train_cycle.py")
    cycle = choose_cycle(layout, args.get("cycle"))
    out = choose_out(layout, cycle, args.get("out"), overwrite == "true")
    sae = load_sae(layout.sae(cycle))
    if sae.registry_name not in EXPORT_SPECS:
        raise ConfigError(f"cycle {cycle}'s SAE is of type {sae.registry_name!r}, which SAELens has no architecture for; "
                          f"supported: {', '.join(EXPORT_SPECS)}")
    metadata = export_metadata(read_run_config(layout.config), layout.root, cycle, sae)
    write_saelens_folder(sae, out, metadata)
    log.info("wrote %s: cycle %d's %s SAE (%d -> %d) of %s as a SAELens %s SAE; load it with "
             "sae_lens.SAE.load_from_disk(%r)", out, cycle, sae.registry_name, sae.d_in, sae.d_sae, layout.root,
             EXPORT_SPECS[sae.registry_name].architecture, str(out))
    return out


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    try:
        export(parse_args(argv))
    except SAECeptionError as ex:
        log.error("error: %s", ex)
        sys.exit(2)
    except OSError as ex:  # a full disk, a read-only folder: one line (anything else is a bug: traceback)
        line = write_error_line(ex)
        if line is None:
            raise
        log.error("error: %s", line)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
