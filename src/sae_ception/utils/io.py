"""Atomic file and checkpoint I/O: a kill mid-write never leaves a file that a resumed run would trust."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from safetensors import SafetensorError

from sae_ception.errors import ArtifactError, DivergenceError

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "config.json"


def user_path(path: str | os.PathLike) -> Path:
    """A path the user typed: relative ones mean relative to where they ran the command, not Hydra's run
    folder (Hydra may change the working directory)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import to_absolute_path
    except ImportError:  # pragma: no cover - hydra is a dependency, but the loaders do not need it
        return Path(path)
    return Path(to_absolute_path(str(path))) if HydraConfig.initialized() else Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create owner-only files; give the result the mode a plain open/mkdir would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# errno -> what a failed write means for the user
WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for this file system"}


@contextlib.contextmanager
def naming_failed_writes(path: Path) -> Iterator[None]:
    """A failed write (a full disk, a read-only folder: WRITE_ERRNOS) raises an OSError naming `path`, not the
    temporary file it was writing."""
    try:
        yield
    except (OSError, SafetensorError) as ex:
        code = ex.errno if isinstance(ex, OSError) else _safetensors_errno(ex)
        if code is None and re.fullmatch(r"\d+ requested and \d+ written", str(ex)):
            code = errno.ENOSPC  # numpy's short write (`ndarray.tofile`): the disk filled up mid-write
        if code not in WRITE_ERRNOS:
            raise
        raise OSError(code, os.strerror(code), str(path)) from None


def _safetensors_errno(ex: Exception) -> int | None:
    """safetensors reports a failed write as `SafetensorError(... (os error 28))`: the errno it wraps."""
    match = re.search(r"\(os error (\d+)\)", str(ex))
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step. A failed write
    leaves `path` as it was and raises an OSError naming `path`."""
    path = Path(path)
    with naming_failed_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming_failed_writes(path):
            yield tmp_path
            _usual_mode(tmp_path)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (folders appear complete or not at all).
    A failed write leaves `path` as it was and raises an OSError naming `path`."""
    path = Path(path)
    with naming_failed_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with naming_failed_writes(path):
            yield tmp_path
            _usual_mode(tmp_path, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


def _finite_or_null(value: Any) -> Any:
    """NaN/inf become null: standard JSON, and a metric that is undefined reads as missing, not as a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, remedy: str = "delete it so the stage that writes it runs again") -> Any:
    """Parsed JSON; a missing, unreadable or malformed file is one ArtifactError naming it and `remedy`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise ArtifactError(f"{path} is damaged (not valid JSON: {str(ex).splitlines()[0]}); {remedy}") from None
    except OSError as ex:
        raise ArtifactError(f"{path} cannot be read ({ex.strerror or ex}); {remedy}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, remedy: str = "delete it so the stage that writes it runs again") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or malformed file is one ArtifactError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as ex:
        reason = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
        raise ArtifactError(f"{path} is damaged or truncated ({reason[:160]}); {remedy}") from None


def non_finite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """A checkpoint is a folder: `weights.safetensors` plus `config.json` saying what built it (no pickles).
    Non-finite weights are never saved (DivergenceError): whatever was at `directory` stays as it was."""
    directory = Path(directory)
    bad = non_finite_tensor(state_dict)
    if bad is not None:
        raise DivergenceError(f"not saving {directory}: its weights diverged ({bad} holds NaN or inf); "
                              "lower the learning rate of the stage that trained it")
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a checkpoint folder. A damaged file (truncated weights, malformed config.json)
    or non-finite weights (a diverged training saved by an older version) is one ArtifactError naming it."""
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / META_FILE).is_file():
        raise ArtifactError(
            f"{directory} is not a checkpoint folder (it needs {WEIGHTS_FILE} and {META_FILE})"
        )
    remedy = f"delete {directory} to have it trained again, or give another checkpoint"
    meta = _read_meta(directory, remedy)
    state = load_tensors(directory / WEIGHTS_FILE, remedy)
    bad = non_finite_tensor(state)
    if bad is not None:
        raise ArtifactError(f"{directory / WEIGHTS_FILE} holds NaN or inf weights ({bad}): the training that saved it "
                            f"diverged; {remedy}")
    return state, meta


def _read_meta(directory: Path, remedy: str) -> dict[str, Any]:
    """A checkpoint's config.json: a JSON object, else one ArtifactError naming it and `remedy`."""
    meta = read_json(directory / META_FILE, remedy)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{directory / META_FILE} is damaged (not a JSON object); {remedy}")
    return meta


def check_checkpoint(directory: str | os.PathLike, remedy: str) -> None:
    """Cheap integrity check of a checkpoint folder without reading its weights: config.json parses, and the
    weights file's header is valid and covers the file (a truncated file fails). ArtifactError names the file."""
    directory = Path(directory)
    _read_meta(directory, remedy)
    try:
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as ex:
        reason = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
        raise ArtifactError(f"{directory / WEIGHTS_FILE} is damaged or truncated ({reason[:160]}); {remedy}") from None


def checkpoint_exists(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / WEIGHTS_FILE).is_file() and (directory / META_FILE).is_file()


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, setting: str) -> None:
    """Load weights, turning a shape or key mismatch into one line that names the offending tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ArtifactError(
            f"{setting}: checkpoint {source} does not fit the configured model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in own.items():
        if tuple(tensor.shape) != tuple(state_dict[name].shape):
            raise ArtifactError(
                f"{setting}: checkpoint {source} does not fit the configured model: "
                f"{name} has shape {tuple(state_dict[name].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )
    module.load_state_dict(state_dict)
