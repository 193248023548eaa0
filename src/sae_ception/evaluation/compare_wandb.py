"""`compare.py --wandb`: the comparison as a wandb run beside the runs it compares.

Where it goes is read from the compared runs' own `config.yaml` (`wandb.project`, `wandb.entity`,
`wandb.mode`), so the table lands in the project their curves are in. Its group is the runs' shared group: their
`wandb.group` when they all set the same one, else the group they logged to (`wandb_group.txt`, written by
utils/tracking.py: a sweep's name) when they all share one; none otherwise. The run is named
`compare-<first folder's name>`, has job_type "compare", and an offline one is written under the first folder
given (`<folder>/wandb/offline-run-*`; upload it with `wandb sync`).

Refused in one ConfigError line, before the table is printed: runs of different projects (or entities), runs
logged in different modes or with wandb disabled (unless `--wandb-mode` chooses), a mode that is not one of
offline | online | disabled.

Logged: `compare/table` (one row per group × metric × quantity: mean, sample std, n of the runs defining it,
the group's size), `compare/paired` (with --baseline: the rows of paired_vs_<baseline>.csv) and the paired PNG
as `compare/paired_figure`; the run's config holds the folders, the grouping keys, the cycle, the run count and
the kind of run compared.

Concept-transfer runs (one entry per method, evaluation/compare.py) have the same wandb settings in their
config.yaml; each run counts once here (not once per method), its group record is read from the run folder, and
the table has only `at_cycle` rows (their one result: no change since cycle 0).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sae_ception.config import WANDB_MODES, WandbConfig
from sae_ception.errors import ConfigError
from sae_ception.evaluation.compare import Comparison, RunResults, is_quantile, run_folders
from sae_ception.utils.io import naming_failed_writes
from sae_ception.utils.tracking import GROUP_FILE, MAX_GROUP

TABLE_COLUMNS = ["group", "metric", "quantity", "mean", "std", "n", "runs"]
QUANTITIES = ("at_cycle", "change_since_cycle_0")


@dataclass(frozen=True)
class WandbTarget:
    project: str
    entity: Optional[str]
    mode: str
    group: Optional[str]


def _counted(values: Counter) -> str:
    return "; ".join(f"{value}: {count} run{'' if count == 1 else 's'}" for value, count in values.most_common())


def _logged_group(run: RunResults) -> Optional[str]:
    """The group the run logged to (utils/tracking.py's GROUP_FILE), None when it has no (readable) record."""
    path = run.run_folder / GROUP_FILE  # a transfer method's entry: its run's folder
    try:
        return (path.read_text(encoding="utf-8").strip() or None) if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def wandb_target(runs: list[RunResults], mode: Optional[str] = None) -> WandbTarget:
    """Where the comparison of `runs` is logged (see the module docstring); `mode` overrides the runs' mode.
    Raises ConfigError (one line) when the runs do not share one project or one mode."""
    default = WandbConfig()
    runs = list({run.run_folder: run for run in reversed(runs)}.values())[::-1]  # a transfer run: once, not per method
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"--wandb-mode {mode}: not a wandb mode; use one of {', '.join(WANDB_MODES)}")
    projects = Counter("/".join(filter(None, (r.settings.get("wandb.entity", default.entity),
                                              str(r.settings.get("wandb.project", default.project)))))
                       for r in runs)
    if len(projects) > 1:
        raise ConfigError(f"--wandb: the runs log to different wandb projects ({_counted(projects)}); compare the "
                          "runs of one project (e.g. --where wandb.project=NAME)")
    if mode is None:
        modes = Counter(str(r.settings.get("wandb.mode", default.mode)) for r in runs)
        if len(modes) > 1:
            raise ConfigError(f"--wandb: the runs were logged with different wandb modes ({_counted(modes)}); "
                              f"choose one with --wandb-mode {'|'.join(WANDB_MODES[:2])}")
        mode = next(iter(modes))
        if mode == "disabled":
            raise ConfigError("--wandb: these runs were made with wandb.mode=disabled, so nothing would be logged; "
                              "give --wandb-mode offline (or online) to log the comparison anyway")
    groups = {r.settings.get("wandb.group") for r in runs}
    if len(groups) != 1 or None in groups:
        groups = {_logged_group(r) for r in runs}
    group = next(iter(groups)) if len(groups) == 1 else None
    return WandbTarget(project=str(runs[0].settings.get("wandb.project", default.project)),
                       entity=runs[0].settings.get("wandb.entity", default.entity), mode=mode,
                       group=None if group is None else str(group)[-MAX_GROUP:])


def comparison_rows(comparison: Comparison, skip_quantiles: bool = True) -> list[list[Any]]:
    """TABLE_COLUMNS rows: per group, metric and quantity (the value at the compared cycle, or its change since
    cycle 0) the mean, sample std and count of the runs that define it (None where undefined), and the group's
    size."""
    rows = []
    quantities = QUANTITIES if comparison.has_cycles else QUANTITIES[:1]  # transfer runs: no change since cycle 0
    for name, members in comparison.groups.items():
        for row in comparison.rows:
            if skip_quantiles and is_quantile(row.metric):
                continue
            for quantity, (mean, std, n) in zip(quantities, (row.final[name], row.change[name])):
                rows.append([name, row.metric, quantity, _number(mean), _number(std), n, len(members)])
    return rows


def _number(value: float) -> Optional[float]:
    return None if value is None or value != value else float(value)


def _csv_rows(text: str) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of a CSV of compare_paired.CSV_COLUMNS, each cell as the value it was written from:
    numbers as numbers (empty: None), `excludes_zero` as a bool, labels as text (a group label `0.1` stays text)."""
    header, *rows = list(csv.reader(io.StringIO(text)))
    numeric = {"n", "mean_diff", "ci_low", "ci_high", "baseline_mean", "group_mean"}

    def cell(column: str, value: str) -> Any:
        if column == "excludes_zero":
            return value == "True"
        if column in numeric:
            return None if value == "" else int(value) if column == "n" else float(value)
        return value

    return header, [[cell(column, value) for column, value in zip(header, row)] for row in rows]


def log_comparison(comparison: Comparison, target: WandbTarget, folders: list[Path], skip_quantiles: bool = True,
                   paired_csv: Optional[str] = None, figure: Optional[Path] = None) -> str:
    """Log the comparison (and the paired CSV text and PNG, when given) as one wandb run of job_type "compare"
    in `target`, named after the first of `folders` (the folders given to compare.py); offline files go under
    it. Returns one line saying where it went. Raises ConfigError when wandb cannot start (e.g. online without
    a login); OSError (naming the folder) when its files cannot be written."""
    import wandb

    folder = Path(folders[0])
    runs = [r for members in comparison.groups.values() for r in members]
    name = f"compare-{folder.resolve().name}"[:MAX_GROUP]
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        run = wandb.init(project=target.project, entity=target.entity, group=target.group, name=name,
                         job_type="compare", mode=target.mode, dir=str(folder),
                         config={"folders": [str(f) for f in folders], "group_by": comparison.group_by,
                                 "cycle": comparison.cycle, "runs": len(run_folders(runs)),
                                 "kind": comparison.kind})
    except wandb.errors.Error as ex:
        raise ConfigError(f"--wandb: wandb could not start ({' '.join(str(ex).split())[:200]}); check the "
                          "project, your login (`wandb login`), or use --wandb-mode offline") from None
    with naming_failed_writes(Path(folder) / "wandb"):
        logged: dict[str, Any] = {
            "compare/table": wandb.Table(columns=TABLE_COLUMNS, data=comparison_rows(comparison, skip_quantiles))}
        if paired_csv is not None:
            header, data = _csv_rows(paired_csv)
            logged["compare/paired"] = wandb.Table(columns=header, data=data)
        if figure is not None:
            logged["compare/paired_figure"] = wandb.Image(str(figure))
        run.log(logged)
        where = f"{run.dir.rsplit('/files', 1)[0]}" if target.mode == "offline" else getattr(run, "url", None) or ""
        run.finish()
    group = f", group {target.group}" if target.group else ""
    return f"wandb: logged the comparison as {name} to {target.project} ({target.mode}{group}){' at ' + where if where else ''}"
