"""A run folder's `config.yaml`, read back by every script the same way: a damaged one is one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sae_ception.errors import ArtifactError

RESTORE = "it records the settings that made this run: restore it, or use a new run_dir"


def read_run_config(path: Path, remedy: str = RESTORE) -> dict[str, Any]:
    """The settings a run folder's config.yaml records. Raises ArtifactError naming the file and `remedy` when it
    cannot be read, is not valid YAML (syntax errors, a truncated file, undecodable bytes), is empty, or is not
    a mapping of settings."""
    path = Path(path)
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as ex:
        raise ArtifactError(f"{path} is damaged (not valid YAML: {' '.join(str(ex).split())[:120]}); {remedy}") from None
    except OSError as ex:
        raise ArtifactError(f"{path} cannot be read ({ex.strerror or ex}); {remedy}") from None
    if not isinstance(saved, dict) or not saved:
        what = "empty" if saved is None or saved == {} else f"a {type(saved).__name__}, not a mapping of settings"
        raise ArtifactError(f"{path} is damaged ({what}); {remedy}")
    return {str(key): value for key, value in saved.items()}
