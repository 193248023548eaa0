"""`results/cycle_N.json`, read back with its shape checked: a damaged file is one clear line, never a traceback."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from sae_ception.errors import ArtifactError
from sae_ception.utils.io import read_json


def results_remedy(path: Path) -> str:
    """What to do about a damaged results file: re-evaluate that cycle of its run (no training)."""
    run_dir, stem = Path(path).parent.parent, Path(path).stem
    cycle = stem.split("_", 1)[1] if stem.startswith("cycle_") else "N"
    return f"rewrite it with `python scripts/evaluate.py run_dir={run_dir} eval_cycle={cycle}`"


def read_results(path: str | Path) -> dict[str, Any]:
    """The parsed results of one cycle: {"cycle": int, "metrics": {family: {name: number or null}}, ...}.

    Raises ArtifactError naming the file (and how to rewrite it) when it is not valid JSON or not of that shape."""
    path = Path(path)
    remedy = results_remedy(path)
    data = read_json(path, remedy)
    problem = None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        problem = "no 'metrics' object"
    elif not isinstance(data.get("cycle"), int) or isinstance(data.get("cycle"), bool):
        problem = "no integer 'cycle'"
    else:
        for family, values in data["metrics"].items():
            if not isinstance(values, dict) or not all(
                    v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)) for v in values.values()):
                problem = f"metric family {family!r} is not a map of numbers"
                break
    if problem:
        raise ArtifactError(f"{path} is damaged ({problem}); {remedy}")
    return data
