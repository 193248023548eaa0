"""`compare.py --baseline GROUP`: each group's difference from a baseline group, paired by seed.

A run of group G with seed s is paired with the baseline's run with seed s; per pair and metric
d = value_G − value_baseline at the compared cycle (and, in a second row, d of the two runs' changes since
cycle 0); each cell is the mean of d over the n pairs with its 95% Student's t interval (evaluation/paired.py
gives the formula). A `*` marks an interval that excludes 0, with `ok`/`bad` when that difference goes the
metric's better/worse way (evaluation/report.py's `verdict`).

What it refuses and what it says:
- a `--baseline` that is no group label and no `key=value[,key=value]` selector matching exactly one group is
  one ConfigError line naming the groups that exist; so is a baseline that is the only group, and a `--metrics`
  key that is not a metric of the runs;
- runs that cannot be paired are left out and said in `note:` lines, never silently: a seed present in one
  group but not the other, a seed repeated within a group (ambiguous pairing), a run without a seed setting;
- a cell that only k of the group's n pairs define says `(n=k)`; one pair gives a mean and `no CI`; none `n/a`.

Outputs: the paired table (text), a CSV with one row per group × metric × quantity (`paired_csv`) and a PNG
of the differences with their 95% error bars, one panel per headline metric (`paired_figure`), both named
`paired_vs_<baseline slug>` and written atomically (`write_paired`).

Concept-transfer runs (one entry per method, evaluation/compare.py) pair the same way: with
`--baseline transfer.method=none` (or the label `none`) each method's difference from that method, per seed, in
each of its measures and budget items. They have no cycles, so no "Δ since cycle 0" rows, no
`change_since_cycle_0` rows in the CSV (its `at_cycle` rows hold the one result), and the PNG's default panels
are the four concept/* measures (TRANSFER_HEADLINE).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from sae_ception.errors import ConfigError
from sae_ception.evaluation.compare import (Comparison, RunResults, count_runs, is_quantile, name_list, table_lines,
                                            setting_label)
from sae_ception.evaluation.paired import CONFIDENCE, PairedDifference, paired_difference
from sae_ception.evaluation.report import ABSOLUTE, verdict
from sae_ception.utils.io import atomic_path, write_text

# The PNG's panels by default (those the runs have): the model's accuracy, the SAE's monosemanticity and
# clustering, and what linear probes read from the dense and the SAE representation.
HEADLINE = ("performance/accuracy", "monosemanticity_sae/csi_mean", "monosemanticity_sae/u_mean",
            "clustering_sae/ari_kmeans", "probe/dense_accuracy", "probe/sae_accuracy")
# The PNG's default panels for concept-transfer runs: what each method transfers, preserves and confuses.
TRANSFER_HEADLINE = ("concept/transfer", "concept/preservation", "concept/preservation_change", "concept/specificity")
QUANTITIES = ("at_cycle", "change_since_cycle_0")  # the CSV's `quantity`: the value compared, or its Δ since 0
CSV_COLUMNS = ("group", "metric", "n", "mean_diff", "ci_low", "ci_high", "excludes_zero", "baseline_mean",
               "group_mean", "quantity", "verdict")
SEED = "seed"


@dataclass
class PairedCell:
    """One group × metric × quantity: the paired difference, the means of the two sides over the same pairs
    (so group_mean − baseline_mean = diff.mean), and the verdict of a difference whose interval excludes 0."""

    diff: PairedDifference
    baseline_mean: float
    group_mean: float
    verdict: str = ""  # 'better', 'worse', 'same' or '' (interval includes 0, or no preferred direction)


@dataclass
class PairedRow:
    metric: str
    at_cycle: dict[str, PairedCell]  # group -> difference at the compared cycle
    change: dict[str, PairedCell]  # group -> difference of the changes since cycle 0


@dataclass
class PairedComparison:
    comparison: Comparison
    baseline: str  # the baseline group's label
    pairs: dict[str, list[tuple[Any, RunResults, RunResults]]]  # group -> (seed, its run, the baseline's run)
    rows: list[PairedRow]
    notes: list[str] = field(default_factory=list)
    confidence: float = CONFIDENCE

    @property
    def groups(self) -> list[str]:
        """The groups compared with the baseline, in the table's order."""
        return list(self.pairs)


# --- choosing the baseline


def _matches(runs: list[RunResults], key: str, value: str) -> bool:
    """Every run of a group has `key` = `value` (as its label prints it, or as YAML reads `value`: `true`, `0.10`)."""
    wanted = {value}
    try:
        wanted.add(setting_label({key: yaml.safe_load(value)}, key))
    except yaml.YAMLError:
        pass
    return all(setting_label(run.settings, key) in wanted for run in runs)


def select_baseline(comparison: Comparison, selector: str) -> str:
    """The group `selector` names: a group label exactly as the table prints it, or `key=value[,key=value...]`
    matching exactly one group. Anything else is one ConfigError line naming the groups that exist."""
    groups = comparison.groups
    if selector in groups:
        chosen = [selector]
    else:
        # commas inside [...] belong to a list value (`cycle.aux_loss_weight=[0.1,1.0]`), not between selectors
        parts = [part.partition("=") for part in re.split(r",(?![^\[]*\])", selector)] if "=" in selector else []
        if parts and all(key.strip() and sep for key, sep, _ in parts):
            chosen = [name for name, runs in groups.items()
                      if all(_matches(runs, key.strip(), value.strip()) for key, _, value in parts)]
        else:
            chosen = []
    if len(chosen) != 1:
        keys = ", ".join(comparison.group_by) or "nothing"
        example = (f", or select one with key=value, e.g. {comparison.group_by[0]}="
                   f"{setting_label(next(iter(groups.values()))[0].settings, comparison.group_by[0])}"
                   if comparison.group_by else "")
        what = "no group matches" if not chosen else f"{len(chosen)} groups match ({', '.join(map(repr, chosen))})"
        raise ConfigError(f"--baseline {selector}: {what}; the groups (by {keys}) are "
                          f"{', '.join(map(repr, groups))}: give one label exactly as shown{example}")
    if len(groups) == 1:
        raise ConfigError(f"--baseline {selector}: it is the only group, so there is nothing to compare with it; "
                          "give folders with runs of other settings, or --by a setting that differs")
    return chosen[0]


def slug(label: str) -> str:
    """A file-name-safe form of a group label: `random, 0.1` -> `random_0.1`. A label with other characters than
    letters, digits, `.+-`, `_` and `, ` (a list such as `[0.1]`) also gets a short hash of itself, so two labels
    never share a file name (`[0.1]` and `0.1`)."""
    safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_.") or "baseline"
    plain = re.fullmatch(r"[A-Za-z0-9.+\-_]+(, [A-Za-z0-9.+\-_]+)*", label) is not None
    return safe if plain else f"{safe}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"


# --- pairing by seed


def _seed_order(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) and not isinstance(seed, bool) else (1, 0, str(seed))


def _seeds(seeds) -> str:
    return ", ".join(str(s) for s in sorted(seeds, key=_seed_order))


def _by_seed(name: str, runs: list[RunResults], notes: list[str]) -> tuple[dict[Any, RunResults], set]:
    """seed -> the group's one run with it, and every seed the group has; runs without a seed or with a repeated
    seed are noted and left out."""
    seeded: dict[Any, list[RunResults]] = {}
    unseeded = []
    for run in runs:
        seed = run.settings.get(SEED)
        (unseeded if seed is None else seeded.setdefault(seed, [])).append(run)
    if unseeded:
        notes.append(f"{count_runs(len(unseeded), 'has')} no seed setting in group '{name}', so no pair: "
                     f"{name_list(r.folder for r in unseeded)}; left out of the paired differences")
    for seed, members in sorted(seeded.items(), key=lambda item: _seed_order(item[0])):
        if len(members) > 1:
            notes.append(f"seed {seed} is repeated in group '{name}' ({name_list(r.folder for r in members)}): "
                         "ambiguous pairing, so those runs are left out of the paired differences")
    return {seed: members[0] for seed, members in seeded.items() if len(members) == 1}, set(seeded)


def pair_by_seed(comparison: Comparison, baseline: str) -> tuple[dict[str, list[tuple[Any, RunResults, RunResults]]],
                                                                 list[str]]:
    """Per group other than `baseline`: (seed, its run, the baseline's run) for every seed both have exactly
    once; and a note for each run left out (seed on one side only, repeated seed, no seed)."""
    notes: list[str] = []
    base, base_seeds = _by_seed(baseline, comparison.groups[baseline], notes)
    pairs = {}
    for name, runs in comparison.groups.items():
        if name == baseline:
            continue
        own, own_seeds = _by_seed(name, runs, notes)
        only_here, only_base = own_seeds - base_seeds, base_seeds - own_seeds  # (a repeated seed is noted above)
        if only_here or only_base:
            sides = [f"only '{name}' has seed{'s' if len(only_here) > 1 else ''} {_seeds(only_here)}" if only_here else "",
                     f"only '{baseline}' has seed{'s' if len(only_base) > 1 else ''} {_seeds(only_base)}" if only_base else ""]
            notes.append(f"'{name}' vs '{baseline}': {'; '.join(s for s in sides if s)}: "
                         "unpaired runs, left out of the paired differences")
        pairs[name] = [(seed, own[seed], base[seed]) for seed in sorted(set(own) & set(base), key=_seed_order)]
        if not pairs[name]:
            notes.append(f"no run of '{name}' pairs with a run of '{baseline}' by seed: its cells are n/a")
    return pairs, notes


# --- the differences


def _value(comparison: Comparison, run: RunResults, metric: str) -> Optional[float]:
    value = run.by_cycle[comparison.cycles[run.folder]].get(metric)
    return value if value is not None and math.isfinite(value) else None


def _change(comparison: Comparison, run: RunResults, metric: str) -> Optional[float]:
    start, end = run.by_cycle.get(0, {}).get(metric), _value(comparison, run, metric)
    return end - start if end is not None and start is not None and math.isfinite(start) else None


def _cell(metric: str, sides: list[tuple[Optional[float], Optional[float]]], change: bool,
          confidence: float) -> PairedCell:
    both = [(g, b) for g, b in sides if g is not None and b is not None]
    diff = paired_difference([g - b for g, b in both], confidence)
    group_mean = statistics.fmean([g for g, _ in both]) if both else math.nan
    baseline_mean = statistics.fmean([b for _, b in both]) if both else math.nan
    judged = ""
    if diff.excludes_zero:
        # a change's verdict is the direction of the difference; |x| metrics have none for a difference of changes
        judged = ("" if metric.split("/", 1)[-1] in ABSOLUTE else verdict(metric, 0.0, diff.mean)) if change \
            else verdict(metric, baseline_mean, group_mean)
    return PairedCell(diff, baseline_mean, group_mean, judged)


def paired_comparison(comparison: Comparison, baseline: str, confidence: float = CONFIDENCE) -> PairedComparison:
    """Every other group's paired difference from `baseline` (a label of `comparison.groups`, e.g. from
    `select_baseline`), per metric of the comparison, at the compared cycle and for the change since cycle 0
    (undefined, n = 0, for concept-transfer runs: they have no cycles, and nothing shows it)."""
    pairs, notes = pair_by_seed(comparison, baseline)
    rows = []
    for metric in (row.metric for row in comparison.rows):
        row = PairedRow(metric, {}, {})
        for name, matched in pairs.items():
            row.at_cycle[name] = _cell(metric, [(_value(comparison, g, metric), _value(comparison, b, metric))
                                                for _, g, b in matched], False, confidence)
            row.change[name] = _cell(metric, [(_change(comparison, g, metric), _change(comparison, b, metric))
                                              for _, g, b in matched], True, confidence)
        rows.append(row)
    return PairedComparison(comparison, baseline, pairs, rows, notes, confidence)


# --- the table


def _format_cell(cell: PairedCell, size: int) -> str:
    diff = cell.diff
    if diff.n == 0:
        return "n/a"
    if diff.n == 1:
        text = f"{diff.mean:+.3g} (no CI)"
    else:
        text = f"{diff.mean:+.3g} [{diff.low:+.3g}, {diff.high:+.3g}]"
        if diff.excludes_zero:
            text += "*" + {"better": " ok", "worse": " bad"}.get(cell.verdict, "")
    return text if diff.n == size else f"{text} (n={diff.n})"


def _rows(paired: PairedComparison, skip_quantiles: bool) -> list[PairedRow]:
    return [row for row in paired.rows if not (skip_quantiles and is_quantile(row.metric))]


def format_paired(paired: PairedComparison, skip_quantiles: bool = True) -> str:
    """The paired table: one column per group (its number of pairs n), two rows per metric (the difference at
    the compared cycle, and the difference of the changes since cycle 0), with the legend and notes above."""
    names = paired.groups
    sizes = {name: len(paired.pairs[name]) for name in names}
    cycles = paired.comparison.has_cycles
    cells = []
    for row in _rows(paired, skip_quantiles):
        cells.append((row.metric, [_format_cell(row.at_cycle[n], sizes[n]) for n in names]))
        if cycles:
            cells.append(("  Δ since cycle 0", [_format_cell(row.change[n], sizes[n]) for n in names]))
    level = f"{paired.confidence:.0%}"
    lines = [
        f"difference from the baseline group '{paired.baseline}', paired by seed, mean difference [{level} CI], "
        "* = interval excludes 0",
        f"a cell: mean over the n seed pairs of (group − baseline){' at the compared cycle' if cycles else ''}; "
        f"{level} CI: mean ± t({(1 + paired.confidence) / 2:g}, n−1)·sd/√n (Student's t over the pairs); "
        "no CI for n = 1; (n=k) when only k pairs define it",
        "Δ since cycle 0: the same for each run's change since cycle 0; "
        "ok/bad after *: the difference goes the better/worse way" if cycles else
        "ok/bad after *: the difference goes the better/worse way (budget/* has no better way)",
        *(f"note: {note}" for note in paired.notes),
    ]
    return "\n".join(lines + table_lines([f"{n} (n={sizes[n]})" for n in names], cells))


# --- the CSV


def _number(value: float) -> Any:
    return "" if value is None or not math.isfinite(value) else value


def paired_csv(paired: PairedComparison, skip_quantiles: bool = True) -> str:
    """One row per group × metric × quantity (CSV_COLUMNS; `quantity`: at_cycle or change_since_cycle_0);
    undefined numbers (no pair, no interval for n = 1) are empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    quantities = QUANTITIES if paired.comparison.has_cycles else QUANTITIES[:1]  # transfer runs: no change rows
    for name in paired.groups:
        for row in _rows(paired, skip_quantiles):
            for quantity, cell in zip(quantities, (row.at_cycle[name], row.change[name])):
                d = cell.diff
                writer.writerow([name, row.metric, d.n, _number(d.mean), _number(d.low), _number(d.high),
                                 d.excludes_zero, _number(cell.baseline_mean), _number(cell.group_mean), quantity,
                                 cell.verdict])
    return buffer.getvalue()


# --- the figure


def figure_metrics(paired: PairedComparison, chosen: Optional[list[str]] = None) -> list[str]:
    """The PNG's panels: `chosen` (each must be a metric of the runs: else one ConfigError line with the closest
    ones), or the HEADLINE metrics the runs have (TRANSFER_HEADLINE for concept-transfer runs; the first six
    non-quantile metrics when they have none)."""
    known = [row.metric for row in paired.rows]
    if chosen:
        for metric in chosen:
            if metric not in known:
                close = difflib.get_close_matches(metric, known, n=4, cutoff=0.5)
                raise ConfigError(f"--metrics {metric}: not a metric of these runs; "
                                  + (f"the closest are {', '.join(close)}" if close else
                                     f"give family/name keys, e.g. {', '.join(known[:3])}"))
        return list(dict.fromkeys(chosen))
    headline = [m for m in (HEADLINE if paired.comparison.has_cycles else TRANSFER_HEADLINE) if m in known]
    return headline or [m for m in known if not is_quantile(m)][:6]


COLOURS = {"better": "#2b8a3e", "worse": "#c92a2a"}  # a starred difference; any other point is grey
GREY = "#495057"


def paired_figure(paired: PairedComparison, metrics: list[str]):
    """A matplotlib Figure: one panel per metric, each group's mean difference from the baseline at the compared
    cycle (a transfer run: its one result) with its CI as an error bar (a point without a bar for one pair, `n/a`
    for none), and a line at 0."""
    from matplotlib.figure import Figure  # only when drawing: the plain table needs no matplotlib

    from sae_ception.evaluation.plots import direction_label  # sets the Agg backend

    by_metric = {row.metric: row for row in paired.rows}
    names = paired.groups
    cols = 2 if len(metrics) == 4 else min(3, len(metrics))  # four panels (transfer's default): 2 × 2
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(max(4.2, 1.1 * len(names) + 2.4) * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for x, name in enumerate(names):
            cell = by_metric[metric].at_cycle[name]
            d = cell.diff
            if d.n == 0:
                ax.text(x, 0.03, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=9, color=GREY)
                continue
            colour = COLOURS.get(cell.verdict, GREY) if d.excludes_zero else GREY
            yerr = [[d.mean - d.low], [d.high - d.mean]] if d.has_interval else None
            ax.errorbar([x], [d.mean], yerr=yerr, fmt="o", color=colour, capsize=5,
                        markerfacecolor=colour if d.excludes_zero else "white")
            ax.annotate(f"n={d.n}" + ("*" if d.excludes_zero else ""), (x, d.mean), textcoords="offset points",
                        xytext=(8, 0), va="center", fontsize=8, color=colour)
        ax.axhline(0.0, color="#adb5bd", linewidth=1, zorder=0)
        if all(by_metric[metric].at_cycle[name].diff.n == 0 for name in names):
            ax.set_ylim(-1.0, 1.0)  # nothing to draw: keep the line at 0 in the middle
        ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names)) > 12 else 0, ha="right"
                      if max(map(len, names)) > 12 else "center")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(f"{metric}\n({direction_label(metric.split('/', 1)[-1])})", fontsize=10)
        ax.set_ylabel("group − baseline", fontsize=9)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    at = " at the compared cycle" if paired.comparison.has_cycles else ""
    fig.suptitle(f"difference from '{paired.baseline}'{at}, paired by seed: mean and "
                 f"{paired.confidence:.0%} CI (filled: excludes 0)", fontsize=11)
    fig.tight_layout()
    return fig


def write_paired(paired: PairedComparison, out_dir: Path, metrics: list[str],
                 skip_quantiles: bool = True) -> list[Path]:
    """`out_dir/paired_vs_<slug>.csv` and `.png`, each written atomically; returns their paths. A failed write
    is an OSError naming the file (utils/io.py)."""
    stem = f"paired_vs_{slug(paired.baseline)}"  # not with_suffix: a slug may hold a dot (`random_0.1`)
    csv_path, png_path = Path(out_dir) / f"{stem}.csv", Path(out_dir) / f"{stem}.png"
    write_text(csv_path, paired_csv(paired, skip_quantiles))
    fig = paired_figure(paired, metrics)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return [csv_path, png_path]
