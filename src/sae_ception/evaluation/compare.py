"""Compare runs: group run folders by the settings that differ between them, and give mean ± std per metric.

A sweep over seeds and a setting (e.g. `sharpening=per_class,random seed=0,1,2`) answers "did it help?"
directly: one column per group, one row per metric, for the last cycle and for its change since cycle 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from sae_ception.errors import ArtifactError
from sae_ception.evaluation.report import flatten_metrics, verdict
from sae_ception.utils.io import read_json

# Settings that never define a group: where and how a run was logged, and the seed being averaged over.
NOT_A_GROUP = ("seed", "run_dir", "paths.", "wandb.", "progress", "resume", "inputs.", "eval_", "device", "cycle.current")


@dataclass
class RunResults:
    folder: Path
    settings: dict[str, Any]  # flattened config.yaml
    by_cycle: dict[int, dict[str, float]]  # cycle -> flat metrics


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if not isinstance(value, list) else tuple(value)
    return out


def find_runs(folders: Iterable[Path]) -> list[RunResults]:
    """Every run folder (config.yaml + results/cycle_*.json) at or below the given folders."""
    runs = []
    for folder in folders:
        for config in sorted(Path(folder).rglob("config.yaml")):
            results = sorted(config.parent.glob("results/cycle_*.json"), key=lambda p: int(p.stem.split("_")[1]))
            if results:
                runs.append(RunResults(
                    folder=config.parent,
                    settings=_flatten(yaml.safe_load(config.read_text())),
                    by_cycle={read_json(p)["cycle"]: flatten_metrics(read_json(p)["metrics"]) for p in results},
                ))
    if not runs:
        raise ArtifactError(f"no run folders (config.yaml + results/cycle_N.json) under {', '.join(map(str, folders))}")
    return runs


def varying_settings(runs: list[RunResults]) -> list[str]:
    keys = sorted(set().union(*(r.settings for r in runs)))
    return [k for k in keys if not k.startswith(NOT_A_GROUP) and len({repr(r.settings.get(k)) for r in runs}) > 1]


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


@dataclass
class Comparison:
    group_by: list[str]
    groups: dict[str, list[RunResults]]
    cycle: Optional[int]
    rows: list["MetricRow"]


@dataclass
class MetricRow:
    metric: str
    final: dict[str, tuple[float, float, int]]  # group -> (mean, std, n) at the compared cycle
    change: dict[str, tuple[float, float, int]]  # group -> the same for the change since cycle 0
    start: dict[str, float]  # group -> mean at cycle 0 (to judge the change's direction)


def compare(runs: list[RunResults], group_by: Optional[list[str]] = None, cycle: Optional[int] = None) -> Comparison:
    """Per group and metric: mean ± std over runs of the value at `cycle` (default: each run's last)
    and of its change since cycle 0."""
    group_by = group_by if group_by is not None else varying_settings(runs)
    groups: dict[str, list[RunResults]] = {}
    for run in runs:
        name = ", ".join(str(run.settings.get(k)) for k in group_by) or "all runs"  # header names the keys
        groups.setdefault(name, []).append(run)
    metrics = list(dict.fromkeys(m for run in runs for flat in run.by_cycle.values() for m in flat))
    rows = []
    for metric in metrics:
        row = MetricRow(metric, {}, {}, {})
        for name, members in groups.items():
            at = [r.by_cycle.get(cycle if cycle is not None else max(r.by_cycle), {}).get(metric) for r in members]
            start = [r.by_cycle.get(0, {}).get(metric) for r in members]
            row.final[name] = _mean_std(at)
            row.start[name] = _mean_std(start)[0]
            row.change[name] = _mean_std([a - s if a is not None and s is not None else None for a, s in zip(at, start)])
        rows.append(row)
    return Comparison(group_by, groups, cycle, rows)


def format_comparison(comparison: Comparison, skip_quantiles: bool = True) -> str:
    names = list(comparison.groups)
    rows = [r for r in comparison.rows if not (skip_quantiles and "_q" in r.metric.split("/", 1)[1])]
    cells = []  # (label, [cell per group])
    for row in rows:
        cells.append((row.metric, [_pm(*row.final[n]) for n in names]))
        cells.append(("  Δ since cycle 0", [_pm(*row.change[n]) + _mark(row.metric, row.start[n], row.final[n][0]) for n in names]))
    width = max([len(n) for n in names] + [len(c) for _, group in cells for c in group])
    label_width = max(len(label) for label, _ in cells) if cells else 6
    header = f"{'metric':<{label_width}}" + "".join(f" | {n:>{width}}" for n in names)
    lines = [
        f"grouped by: {', '.join(comparison.group_by) or '(nothing varies but the seed)'}; "
        f"runs per group: {', '.join(f'{n}: {len(g)}' for n, g in comparison.groups.items())}",
        f"values at cycle {comparison.cycle if comparison.cycle is not None else 'last'}: mean ± std over runs; "
        "ok/bad: whether the mean moved the right way since cycle 0",
        header,
        "-" * len(header),
    ]
    lines += [f"{label:<{label_width}}" + "".join(f" | {c:>{width}}" for c in group) for label, group in cells]
    return "\n".join(lines)


def _pm(mean: float, std: float, n: int) -> str:
    return "n/a" if n == 0 else f"{mean:.4g} ± {std:.2g}"


def _mark(metric: str, start_mean: float, final_mean: float) -> str:
    judged = verdict(metric, start_mean, final_mean) if not (math.isnan(start_mean) or math.isnan(final_mean)) else ""
    return {"better": " ok", "worse": " bad"}.get(judged, "")
