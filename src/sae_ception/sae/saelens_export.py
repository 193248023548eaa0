"""Exporting a run's SAE as a SAELens folder (scripts/export_sae.py is its command line): which cycle, where
the folder may go, the `metadata` cfg.json records, and the atomic write.

Every setting and path is checked before any work, and nothing is written on a refusal:
- `cycle` is a cycle number written plainly (0, 1, 2, ...: `01` or `+1` are refused) that has an SAE.
- `out` must be a folder path that can be created: no parent is a file, no name is longer than the file system
  allows (less the 14 characters of the temporary name beside it), its folder is writable.
- `out` never touches the run: it may not be the run folder, contain it, or lie inside it anywhere but under
  `<run_dir>/saelens/` (where the default `<run_dir>/saelens/sae_cycle_<N>` goes). Nor may it be a symbolic
  link or the current working folder (replacing it would leave the shell in a deleted folder).
- An `out` that exists must be empty, or, with overwrite=true, a SAELens folder: cfg.json and
  sae_weights.safetensors and nothing else. Any other folder is never replaced, so nothing is lost.
A write that fails anyway (a full disk, a file system that refuses it) is one OutputError line naming `out`
and the cause; `out` is then as it was, and the folders the export created for it are removed.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError

from sae_ception.config_file import read_run_config
from sae_ception.errors import ArtifactError, ConfigError, SAECeptionError
from sae_ception.models import MODELS, build_model
from sae_ception.run import RunLayout
from sae_ception.sae.base import SparseAutoencoder, load_sae
from sae_ception.sae.saelens_format import (EXPORT_SPECS, SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE, export_spec,
                                            write_saelens_folder)
from sae_ception.utils.io import WRITE_ERRNOS, checkpoint_exists

CYCLE_NUMBER = re.compile(r"0|[1-9][0-9]*", re.ASCII)
SAELENS_FILES = frozenset({SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE})
EXPORTS_FOLDER = "saelens"  # inside a run, exports go under <run_dir>/saelens/
# atomic_dir writes `.<name>.<8 random characters>.tmp` beside `out`: 14 bytes more than out's own name
TEMP_NAME_EXTRA = len("." + "." + "12345678" + ".tmp")


class OutputError(SAECeptionError):
    """The export's folder cannot be written (refused up front, or a write that failed)."""


# --- which cycle ---------------------------------------------------------------------------------------------
def sae_cycles(layout: RunLayout) -> list[int]:
    """The cycles whose SAE checkpoint is in the run folder (checkpoints/sae_cycle_<N>, N written plainly), in order."""
    found = layout.root.glob("checkpoints/sae_cycle_*")
    return sorted(int(number) for p in found if CYCLE_NUMBER.fullmatch(number := p.name.rsplit("_", 1)[1])
                  and checkpoint_exists(p))


def choose_cycle(layout: RunLayout, value: Optional[str]) -> int:
    """`cycle` (default: the last cycle with an SAE). ConfigError for anything but a plain cycle number (0, 1, ...;
    `01` is refused so a cycle is named one way only), ArtifactError for a cycle without an SAE."""
    have = sae_cycles(layout)
    if value is None:
        if not have:
            raise ArtifactError(f"run_dir={layout.root} holds no SAE (checkpoints/sae_cycle_N); run scripts/train_cycle.py "
                                "or scripts/train_sae.py first")
        return have[-1]
    if not CYCLE_NUMBER.fullmatch(value):
        raise ConfigError(f"cycle={value!r} must be a cycle number written plainly (0, 1, 2, ...; cycles with an SAE: "
                          f"{have or 'none'})")
    if int(value) not in have:
        raise ArtifactError(f"cycle={value}: {layout.root} holds no SAE for cycle {value} (cycles with an SAE: "
                            f"{have or 'none'})")
    return int(value)


# --- metadata ------------------------------------------------------------------------------------------------
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


def _settings(run_cfg: dict[str, Any], key: str, config: Path) -> dict[str, Any]:
    value = run_cfg.get(key) or {}
    if not isinstance(value, dict):
        raise ArtifactError(f"{config} is damaged ({key} is not a mapping); give a run folder made by scripts/train_cycle.py")
    return value


def export_metadata(run_cfg: dict[str, Any], run_dir: Path, cycle: int, sae: SparseAutoencoder,
                    config: Path = Path("config.yaml")) -> dict[str, Any]:
    """cfg.json's `metadata`: SAELens's model_name / hook_name (/ hf_hook_name) and this product's record."""
    model, sae_settings = _settings(run_cfg, "model", config), _settings(run_cfg, "sae", config)
    target = target_description(model)
    token_level = bool(sae_settings.get("token_level", False)) and target["pooling"] is not None
    meta = {"model_name": model.get("pretrained") or model.get("name"), "hook_name": target["hook_name"]}
    if "hf_hook_name" in target:
        meta["hf_hook_name"] = target["hf_hook_name"]
    meta["sae_ception"] = {
        "run_dir": str(run_dir.resolve()), "cycle": cycle,
        "dataset": _settings(run_cfg, "dataset", config).get("name"),
        "model": {"name": model.get("name"), "pretrained": model.get("pretrained")},
        "target_layer": target["target_layer"], "pooling": target["pooling"], "token_level": token_level,
        "rows": "one per non-padding token" if token_level else "one per example" + (
            f" ({target['pooling']} pooling over tokens)" if target["pooling"] else ""),
        "sae_type": sae.registry_name, "sae_config": asdict(sae.cfg),
        "folded": "the input normalisation is folded into the weights (normalize_activations none)",
    }
    return meta


# --- where it goes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportTarget:
    shown: Path  # `out` as given (or the default), for messages
    path: Path  # the same folder, absolute with symbolic links resolved: what is written
    created: tuple[Path, ...]  # the missing folders above it that the write creates, outermost first


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(path, name))
    except (OSError, ValueError):
        return default


def _listing(names: list[str], shown: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _walk(shown: Path, path: Path) -> tuple[Path, list[Path]]:
    """Down the absolute `path` from its root: every name fits the file system (the last one with room for the
    temporary name), no existing part but the last is a file. (The deepest existing folder, the missing ones.)"""
    current = existing = Path(path.anchor)
    created: list[Path] = []
    name_max = _limit(current, "PC_NAME_MAX", 255)
    for i, part in enumerate(path.parts[1:]):
        last = i == len(path.parts) - 2
        limit = name_max - (TEMP_NAME_EXTRA if last else 0)
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"out={shown}: the name {part[:40]}{'...' if len(part) > 40 else ''} has "
                              f"{len(os.fsencode(part))} bytes; at most {limit} fit here (the file system allows "
                              f"{name_max}" + (f", less {TEMP_NAME_EXTRA} for the temporary name of the atomic write)"
                                               if last else ")") + "; give a shorter out")
        current = current / part
        try:
            missing = bool(created) or not current.exists()
        except OSError as ex:  # e.g. a folder above it that may not be searched
            raise OutputError(f"out={shown} cannot be checked at {current} ({ex.strerror or ex}); give another out") from None
        if missing:
            created.append(current)
            continue
        existing = current
        if not current.is_dir():
            raise OutputError(f"out={shown} is a file; give a folder path" if last else
                              f"out={shown} cannot be created: {current} is a file, not a folder")
        name_max = _limit(current, "PC_NAME_MAX", name_max)
    return existing, created


def _check_length(shown: Path, path: Path, existing: Path) -> None:
    """The longest path the write uses (the temporary folder's weights file) fits the file system's PATH_MAX."""
    path_max = _limit(existing, "PC_PATH_MAX", 4096)
    longest = len(os.fsencode(str(path))) + TEMP_NAME_EXTRA + 1 + len(SAELENS_WEIGHTS_FILE)
    if longest >= path_max:
        raise OutputError(f"out={shown} is too long: its files' paths would have {longest} bytes and the file system "
                          f"allows {path_max - 1}; give a shorter out")


def _checked_path(shown: Path) -> tuple[Path, tuple[Path, ...], Path]:
    """(the absolute folder, symbolic links resolved; the missing folders above it, outermost first; the existing
    folder the write creates things in): one OutputError line for a path that cannot be a folder here."""
    text = str(shown)
    if "\0" in text:
        raise OutputError(f"out={text!r} holds a NUL character; give a folder path")
    try:
        plain = Path(os.path.abspath(text))
    except OSError as ex:  # the working folder was deleted
        raise OutputError(f"out={shown} cannot be made absolute ({ex.strerror or ex}); give an absolute path") from None
    if plain.parent == plain:
        raise OutputError(f"out={shown} is the file system's root; give a folder below it")
    _check_length(shown, plain, Path(plain.anchor))
    _walk(shown, plain)  # names that fit, no file on the way: checked before anything else looks at the path
    if shown.is_symlink():
        raise OutputError(f"out={shown} is a symbolic link; give the folder itself ({os.path.realpath(shown)})")
    try:
        path = shown.resolve()
    except (OSError, RuntimeError) as ex:  # a symbolic link loop
        raise OutputError(f"out={shown} cannot be resolved to a folder ({getattr(ex, 'strerror', None) or ex})") from None
    if path.parent == path:
        raise OutputError(f"out={shown} is the file system's root; give a folder below it")
    existing, created = _walk(shown, path)
    _check_length(shown, path, existing)
    workdir = path.parent if existing == path else existing
    return path, tuple(created[:-1] if created and created[-1] == path else created), workdir


def choose_out(layout: RunLayout, cycle: int, value: Optional[str], overwrite: bool) -> ExportTarget:
    """The folder to write (default: <run_dir>/saelens/sae_cycle_<cycle>), checked as the module docstring says.
    OutputError, one line, for any `out` that cannot or may not be written; nothing is touched."""
    if value is not None and not value.strip():
        raise OutputError("out= is empty; give a folder path, or leave out= off for <run_dir>/saelens/sae_cycle_<cycle>")
    shown = Path(value) if value is not None else layout.root / EXPORTS_FOLDER / f"sae_cycle_{cycle}"
    path, created, workdir = _checked_path(shown)
    run = layout.root.resolve()
    if path == run:
        raise OutputError(f"out={shown} is the run folder itself (run_dir={layout.root}); give a folder outside it, or "
                          f"leave out= off for {layout.root / EXPORTS_FOLDER}/sae_cycle_{cycle}")
    if path in run.parents:
        raise OutputError(f"out={shown} contains the run folder run_dir={layout.root}; give a folder that holds no run")
    if run in path.parents and (run / EXPORTS_FOLDER) not in path.parents:
        raise OutputError(f"out={shown} lies inside the run folder run_dir={layout.root}, among the run's own files; "
                          f"inside a run, exports go under {layout.root / EXPORTS_FOLDER}/ (the default, "
                          f"{layout.root / EXPORTS_FOLDER}/sae_cycle_{cycle}), or give a folder outside the run")
    try:
        here = Path.cwd().resolve()
    except OSError:
        here = None
    if path == here:  # replacing it would leave the shell in a deleted folder
        raise OutputError(f"out={shown} is the current working folder; give a folder inside it (e.g. out=sae) or elsewhere")
    if not os.access(workdir, os.W_OK | os.X_OK):
        cause = "the file system is read-only" if os.statvfs(workdir).f_flag & os.ST_RDONLY else "permission denied"
        raise OutputError(f"out={shown} cannot be written: {cause} in {workdir}; give another out")
    if path.is_dir():
        try:
            entries = list(path.iterdir())
        except OSError as ex:
            raise OutputError(f"out={shown} cannot be read ({ex.strerror or ex}); give another out") from None
        others = [p.name for p in entries if p.name not in SAELENS_FILES or p.is_symlink() or not p.is_file()]
        if others:
            raise OutputError(f"out={shown} holds files that are not a SAELens folder's ({_listing(others)}); give "
                              "another out (overwrite=true replaces only a SAELens folder: cfg.json + "
                              "sae_weights.safetensors and nothing else)")
        if entries and len(entries) < len(SAELENS_FILES):
            raise OutputError(f"out={shown} holds only {entries[0].name}, not a whole SAELens folder; give another out, "
                              "or remove it")
        if entries and not overwrite:
            raise OutputError(f"out={shown} exists and is not empty (a SAELens folder); give another out, or "
                              "overwrite=true to replace it")
    return ExportTarget(shown, path, created)


# --- the write -------------------------------------------------------------------------------------------------
def write_failure_line(ex: Exception, shown: Path) -> str:
    """One line for an OSError (or safetensors' wrapped one) while creating, writing or renaming the folder."""
    code = ex.errno if isinstance(ex, OSError) else None
    if code is None:
        match = re.search(r"\(os error (\d+)\)", str(ex))
        code = int(match.group(1)) if match else None
    strerror = (ex.strerror if isinstance(ex, OSError) else None) or (os.strerror(code) if code else str(ex).split("\n")[0])
    filename = getattr(ex, "filename", None)
    at = f" at {filename}" if filename and Path(str(filename)) != shown.resolve() else ""
    if code in WRITE_ERRNOS:
        cause, remedy = f"{WRITE_ERRNOS[code]} ({strerror})", "free space or fix the folder's permissions, then rerun"
    else:
        name = errno.errorcode.get(code, "") if code else ""
        cause, remedy = strerror + (f", {name}" if name else ""), "give an out on a writable local file system"
    return f"could not write out={shown}: {cause}{at}; out is unchanged; {remedy}"


def write_export(sae: SparseAutoencoder, target: ExportTarget, metadata: dict[str, Any]) -> None:
    """`write_saelens_folder` at target.path (atomic: the folder appears complete or not at all). A failed write
    is one OutputError naming `out` and the cause; the folders created for it are removed again."""
    try:
        write_saelens_folder(sae, target.path, metadata)
    except (OSError, SafetensorError) as ex:
        for folder in reversed(target.created):
            try:
                folder.rmdir()  # only if empty: never anything else
            except OSError:
                break
        raise OutputError(write_failure_line(ex, target.shown)) from None


@dataclass(frozen=True)
class Exported:
    out: Path
    cycle: int
    sae: SparseAutoencoder
    architecture: str


def export_sae(run_dir: Path, cycle: Optional[str] = None, out: Optional[str] = None,
               overwrite: bool = False) -> Exported:
    """Check every setting and file, then write cycle `cycle`'s SAE of `run_dir` as a SAELens folder at `out`.
    SAECeptionError (one line) before any write for a bad setting, a missing or damaged file, an `out` that
    may not be written; OutputError for a write that fails."""
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise ArtifactError(f"run_dir={layout.root} " + ("is a file" if layout.root.exists() else "does not exist") +
                            "; give a run folder made by scripts/train_cycle.py")
    if not layout.config.is_file():
        raise ArtifactError(f"run_dir={layout.root} holds no config.yaml; give a run folder made by scripts/train_cycle.py")
    number = choose_cycle(layout, cycle)
    target = choose_out(layout, number, out, overwrite)
    sae = load_sae(layout.sae(number))
    if sae.registry_name not in EXPORT_SPECS:
        raise ConfigError(f"cycle {number}'s SAE is of type {sae.registry_name!r}, which SAELens has no architecture for; "
                          f"supported: {', '.join(EXPORT_SPECS)}")
    metadata = export_metadata(read_run_config(layout.config), layout.root, number, sae, layout.config)
    write_export(sae, target, metadata)
    return Exported(target.shown, number, sae, export_spec(sae).architecture)
