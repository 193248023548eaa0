"""Compare runs: group run folders by the settings that differ between them, and give mean ± std per metric.

A sweep over seeds and a setting (e.g. `sharpening=per_class,random seed=0,1,2`) answers "did it help?"
directly: one column per group, one row per metric, for the compared cycle and for its change since cycle 0.

What the table claims, and what it refuses to claim:
- each cell is the mean over the group's runs and the *sample* standard deviation of those runs (the spread
  of the runs, not a confidence interval of the mean); every group's header says its number of runs n, a group
  of one run shows its single value with no spread, and a cell that only k < n runs define says `(n=k)`;
- every input problem is one `SAECeptionError` line naming the file or argument and what to do: a missing
  folder, a damaged `config.yaml` or `results/cycle_N.json` (read with its shape checked), a `--by` key no run
  has (with the closest keys), a `--cycle` some runs do not have (with the cycles they have);
- what is unusual but still comparable is said in `note:` lines above the table: runs without results yet
  (left out), runs that end at different cycles or stopped before their `cycle.max_cycles`, runs without a
  cycle 0 (no Δ for them), a `--by` key that some runs do not have (their group says `unset`), and runs whose
  SAE is degenerate at some cycle (its `sae/*` metrics are left out, as the run's own table does).

The spread of a group says nothing about whether it differs from another one: `compare.py --baseline GROUP`
adds each group's difference from a baseline group, paired by seed, with a 95% interval
(evaluation/compare_paired.py, on this module's `Comparison`; the statistics in evaluation/paired.py).

Concept-transfer runs (scripts/transfer_concept.py: config.yaml + results/transfer.json) are compared the same
way, read as one entry per method of the run: its settings are the run's without the other methods'
`transfer.<other>.*` settings (which do not change its result), plus `transfer.method: <name>` (so the methods are
the groups, e.g. `--baseline transfer.method=none`), its folder the pseudo-path
`<run>/results/methods/<name>` (distinct per entry, so nothing keyed by folder collides), and its one result
("cycle 0") the method's measures `concept/transfer`, `concept/preservation`, `concept/preservation_change`,
`concept/specificity` (and any other number among its measures, never the confusion matrix) and its budget
`budget/target_images`, `budget/target_labels` (0/1), `budget/other_images`, `budget/gradient_steps`,
`budget/parameters_changed` (and any other number of its budget), the numbers it reports about itself
(`diagnostics/*`, e.g. the Procrustes residual of `procrustes_probe`) and its measures on the validation split
when it has them (`validation/*`, numbers only). For such a comparison:
- the table has no "Δ since cycle 0" rows, no "values at cycle N" line and no cycle notes (a transfer run has
  no cycles), `--cycle` is refused, and `transfer.method` is added to an explicit `--by` that lacks it (a group
  mixing methods would average different methods);
- `concept.methods` and `concept.save_edited` never define a group (each method's result does not depend on
  which other methods ran: every method starts from the run's seed), `concept.target_images` and every
  `transfer.<method>.*` setting do - the latter only for that method's results: a sweep over
  `transfer.procrustes_probe.alpha` gives the groups `none`, ..., `procrustes_probe, alpha=1`,
  `procrustes_probe, alpha=3`, ... (a method's own setting is labelled `key=value`, another method's is left out
  of the label; one that splits none of its method's groups, e.g. `target_images` following
  `concept.target_images`, is not grouped by), and `--where transfer.<method>.<key>=V` selects among that method's
  results and keeps the other methods';
- the same experiment counted more than once - the same seed, method, own method settings and run-level settings,
  from runs that differ only in other methods' settings (every run of such a sweep repeats `none`) - is counted
  once, the first by folder order, with a note saying how many and why; repeats whose numbers differ (a seed's
  result should not) are all kept, with a note;
- an explicit `--by` that leaves a setting differing inside a group (`--by transfer.method` over that sweep) gets a
  note naming the setting, the group and the values its cells average over;
- a run still running (no results/transfer.json yet) is *pending*: left out with a note, even when some of its
  methods have finished (results/methods/<name>.json). Only results/transfer.json says which methods, with which
  settings, the run ended with: a method file may be left from an earlier invocation of a resumed run;
- a damaged results/transfer.json (not JSON, no `methods` map, a method without `measures`/`budget` maps, a
  measure or budget item that is not a number) is one ArtifactError line naming it and how to rewrite it; a run
  whose results/transfer.json lacks a method its config.yaml lists (being resumed with more methods) is a note;
- mixing SAE-ception runs and concept-transfer runs in one comparison is one ConfigError line naming some of each.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from sae_ception.config_file import read_run_config
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.evaluation.report import GROWS_WITH_N_NOTE, flatten_metrics, grows_with_n, verdict
from sae_ception.evaluation.results_file import read_results, results_remedy
from sae_ception.utils.io import read_json

# Settings that never define a group: where and how a run was logged, drawn or scheduled (none of them changes a
# metric), and the seed being averaged over.
NOT_A_GROUP = ("seed", "run_dir", "paths.", "wandb.", "progress", "resume", "inputs.", "eval_", "device",
               "cycle.current", "plots", "analysis.", "threads", "objective",
               # concept transfer: which other methods ran beside a method, and whether edited models were kept
               "concept.methods", "concept.save_edited")
RESULTS_NAME = re.compile(r"cycle_(\d+)\.json")
UNSET = "unset"  # the group label of a run that does not have a grouping key at all (not the same as null)
SHOWN = 3  # runs named in one message before "and N more"

# The two kinds of run folder: SAE-ception (results/cycle_N.json) and concept transfer (results/transfer.json).
CYCLES, TRANSFER = "sae-ception", "transfer"
KIND_NAMES = {CYCLES: "SAE-ception runs", TRANSFER: "concept-transfer runs (scripts/transfer_concept.py)"}
TRANSFER_RESULTS = Path("results") / "transfer.json"
METHOD_FILES = Path("results") / "methods"  # <name>.json per finished method; a method entry's pseudo-folder
METHOD = "transfer.method"  # the setting a transfer run's entry adds: the method's name
MEASURES = ("transfer", "preservation", "preservation_change", "specificity")  # concept/* (evaluation/report.py)


@dataclass
class RunResults:
    folder: Path
    settings: dict[str, Any]  # flattened config.yaml
    by_cycle: dict[int, dict[str, float]]  # cycle -> flat metrics (empty: no results yet)
    degenerate: list[int] = field(default_factory=list)  # cycles whose SAE is degenerate (no latent fires)
    kind: str = CYCLES  # CYCLES or TRANSFER
    # a transfer method's entry: the run folder (`folder` is then <run>/results/methods/<method>, a pseudo-path)
    run: Optional[Path] = None
    finished_methods: list[str] = field(default_factory=list)  # a pending transfer run: its results/methods/*.json
    # a transfer run's entry: methods its config.yaml lists that its results/transfer.json lacks (being resumed)
    missing_methods: list[str] = field(default_factory=list)
    # a transfer method's entry: the run's whole flattened config.yaml (`settings` holds only its own method's
    # transfer.<name>.* keys), to say which other methods' settings repeated entries differ in
    run_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def run_folder(self) -> Path:
        """The run folder this entry comes from (its own folder, but for a transfer method's entry)."""
        return self.run if self.run is not None else self.folder

    @property
    def method(self) -> Optional[str]:
        """A transfer method's entry: the method's name."""
        return self.settings.get(METHOD) if self.run is not None else None

    def has_setting(self, key: str) -> bool:
        """Whether `key` is a setting of this entry at all: a transfer method's entry has the run-level settings and
        its own method's `transfer.<name>.*`, never another method's (for it they are not 'unset', just not its)."""
        owner = method_of_key(key)
        return owner is None or self.method is None or owner == self.method

    @property
    def expected_last(self) -> Optional[int]:
        """The last cycle the run was configured to reach (`cycle.max_cycles`), if its config says."""
        value = self.settings.get("cycle.max_cycles")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def method_of_key(key: str) -> Optional[str]:
    """The transfer method a setting belongs to: `transfer.<name>.<key>` -> name (`transfer.method` is none's)."""
    parts = key.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "transfer" else None


# run-level transfer settings that reach a result only through a method's own settings (its YAML interpolates
# them), so they are not the entry's: `concept.target_images` is each method's `transfer.<name>.target_images`
THROUGH_METHODS = ("concept.target_images",)
# settings of the run's SAEs (transfer/concepts.py): they change only the results of the methods that read them (B's
# SAE also trains on concept.target_images' k target images, so that one is theirs too)
SAE_SETTINGS = ("sae.", "concept.sae_")


def _sae_setting(key: str) -> bool:
    return key.startswith(SAE_SETTINGS)


def method_settings(settings: dict[str, Any], name: str, stored: Any = None, uses_saes: bool = False) -> dict[str, Any]:
    """A transfer method's entry's settings: the run's without the other methods' `transfer.<other>.*` (which
    do not change its result) and without THROUGH_METHODS, plus `transfer.method: <name>`; the SAEs' settings
    (`sae.*`, `concept.sae_*`) only for a method that read the SAEs (`uses_saes`, which keeps
    concept.target_images too). Its own `transfer.<name>.*` come from `stored`, the settings saved with its result
    (what made its numbers; the run's config.yaml is rewritten when a later command starts, possibly before that
    result is), when given."""
    own = {k: v for k, v in settings.items() if method_of_key(k) in (None, name)
           and (k not in THROUGH_METHODS or uses_saes) and (uses_saes or not _sae_setting(k))}
    if isinstance(stored, dict):
        own = {k: v for k, v in own.items() if method_of_key(k) is None}
        own |= _flatten(stored, f"transfer.{name}.")
    return {**own, METHOD: name}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if not isinstance(value, list) else tuple(value)
    return out


def name_list(folders: Iterable[Any]) -> str:
    """`a, b, c and 2 more`: the first SHOWN of `folders` (or any names), for a one-line message."""
    folders = [str(f) for f in folders]
    more = f" and {len(folders) - SHOWN} more" if len(folders) > SHOWN else ""
    return ", ".join(folders[:SHOWN]) + more


def count_runs(count: int, verb: str = "") -> str:
    """`1 run has`, `3 runs have` (verb: "has"/"stops"/"", given in the singular)."""
    plural = {"has": "have", "stops": "stop", "": ""}[verb]
    return f"{count} run{'' if count == 1 else 's'}" + (f" {verb if count == 1 else plural}" if verb else "")


def _cycles(cycles: Iterable[int]) -> str:
    """`0-3`, `0, 2, 3` or `none`."""
    cycles = sorted(cycles)
    if not cycles:
        return "none"
    if cycles == list(range(cycles[0], cycles[-1] + 1)) and len(cycles) > 2:
        return f"{cycles[0]}-{cycles[-1]}"
    return ", ".join(map(str, cycles))


def read_settings(config: Path) -> dict[str, Any]:
    """A run's `config.yaml`, flattened; damaged, empty or not a mapping is one ArtifactError naming it."""
    remedy = (f"restore it from a copy (it holds the settings the run was made with), or move {config.parent} "
              "out of the folders being compared")
    tree = read_run_config(config, remedy)
    return _flatten(tree)


def is_transfer_run(folder: Path, settings: dict[str, Any]) -> bool:
    """A concept-transfer run: it has results/transfer.json, or its config has the `concept` section's target."""
    return (folder / TRANSFER_RESULTS).exists() or "concept.target" in settings


def read_runs(folder: Path) -> list[RunResults]:
    """One run folder as compared entries: an SAE-ception run is one (`read_run`), a concept-transfer run one per
    method (`read_transfer_run`)."""
    settings = read_settings(folder / "config.yaml")
    if is_transfer_run(folder, settings):
        return read_transfer_run(folder, settings)
    return [read_run(folder, settings)]


def transfer_remedy(folder: Path) -> str:
    """What to do about a damaged results/transfer.json: rerun the run into its folder (nothing is retrained)."""
    return (f"rewrite it by rerunning scripts/transfer_concept.py with the run's settings and run_dir={folder} "
            "(it keeps models A and B and every finished method, and rewrites the summary)")


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _method_metrics(name: str, result: Any) -> tuple[dict[str, Optional[float]], Optional[str]]:
    """A method's flat metrics (`concept/<measure>`, `budget/<item>`), or the problem that makes its result
    damaged."""
    if not isinstance(result, dict):
        return {}, f"method {name!r} is not an object"
    measures, budget = result.get("measures"), result.get("budget")
    if not isinstance(measures, dict) or not isinstance(budget, dict):
        return {}, f"method {name!r} has no {'measures' if not isinstance(measures, dict) else 'budget'} object"
    missing = [m for m in MEASURES if m not in measures]
    if missing:
        return {}, f"method {name!r} has no measure {', '.join(map(repr, missing))}"
    wrong = [m for m in MEASURES if not _number(measures[m])]
    if wrong:
        return {}, f"method {name!r}: measure {wrong[0]!r} is not a number"
    wrong = [k for k, v in budget.items() if not (_number(v) or isinstance(v, bool))]
    if wrong:
        return {}, f"method {name!r}: budget item {wrong[0]!r} is not a number"
    flat = {f"concept/{m}": measures[m] for m in MEASURES}
    # any other number among the measures (a measure added later); the confusion matrix and its labels are lists
    flat |= {f"concept/{k}": v for k, v in measures.items() if k not in MEASURES and _number(v) and v is not None}
    flat |= {f"budget/{k}": int(v) if isinstance(v, bool) else v for k, v in budget.items()}
    # what a method reports about itself (e.g. diagnostics/procrustes_residual), and its measures on the validation
    # split (validation/transfer, ...: what to choose a setting by), when they are numbers
    for family in ("diagnostics", "validation"):
        numbers_of = result.get(family)
        if isinstance(numbers_of, dict):
            flat |= {f"{family}/{k}": v for k, v in numbers_of.items() if _number(v) and v is not None}
    return flat, None


def read_transfer_run(folder: Path, settings: Optional[dict[str, Any]] = None) -> list[RunResults]:
    """A concept-transfer run: one entry per method of its results/transfer.json (checked), each with the run's
    settings plus `transfer.method` and its metrics as cycle 0, at the pseudo-folder <run>/results/methods/<name>.
    Without results/transfer.json yet: one entry without results (pending), whatever results/methods/ holds."""
    settings = read_settings(folder / "config.yaml") if settings is None else settings
    path = folder / TRANSFER_RESULTS
    if not path.is_file():
        finished = sorted(p.stem for p in (folder / METHOD_FILES).glob("*.json") if p.is_file())
        return [RunResults(folder=folder, settings=settings, by_cycle={}, kind=TRANSFER, finished_methods=finished)]
    data = read_json(path, transfer_remedy(folder))
    methods = data.get("methods") if isinstance(data, dict) else None
    problem = None if isinstance(methods, dict) and methods else \
        "no 'methods' object" if not isinstance(methods, dict) else "no method results"
    listed = settings.get("concept.methods")
    missing = [str(m) for m in listed if m not in methods] if isinstance(listed, (list, tuple)) and not problem else []
    entries = []
    for name, result in (methods.items() if problem is None else ()):
        flat, problem = _method_metrics(name, result)
        if problem:
            break
        entries.append(RunResults(folder=folder / METHOD_FILES / str(name),
                                  settings=method_settings(settings, name, result.get("settings"),
                                                           uses_saes="sae_a" in (result.get("models") or {})),
                                  by_cycle={0: flat}, kind=TRANSFER, run=folder, missing_methods=missing,
                                  run_settings=settings))
    if problem:
        raise ArtifactError(f"{path} is damaged ({problem}); {transfer_remedy(folder)}")
    return entries


def read_run(folder: Path, settings: Optional[dict[str, Any]] = None) -> RunResults:
    """One SAE-ception run folder: its settings and every `results/cycle_N.json` (each checked; none yet is
    allowed)."""
    settings = read_settings(folder / "config.yaml") if settings is None else settings
    by_cycle, degenerate = {}, []
    files = [(int(m.group(1)), p) for p in (folder / "results").glob("cycle_*.json") if (m := RESULTS_NAME.fullmatch(p.name))]
    for cycle, path in sorted(files):
        data = read_results(path)
        if data["cycle"] != cycle:
            raise ArtifactError(f"{path} is damaged (it says cycle {data['cycle']}, its name says {cycle}); "
                                f"{results_remedy(path)}")
        by_cycle[cycle] = flatten_metrics(data["metrics"])
        if data.get("sae_degenerate"):  # its sae/* numbers describe no features: left out, as the run's own table does
            by_cycle[cycle] = {k: (None if k.startswith("sae/") else v) for k, v in by_cycle[cycle].items()}
            degenerate.append(cycle)
    return RunResults(folder=folder, settings=settings, by_cycle=by_cycle, degenerate=degenerate)


def _is_hidden(path: Path, root: Path) -> bool:
    """Inside a hidden folder (`.hydra/`, a writer's `.name.tmp`) or a wandb folder (wandb's own
    `files/config.yaml`, of a run or of `compare.py --wandb`): not a run of its own."""
    return any(part.startswith(".") or part == "wandb" for part in path.relative_to(root).parts[:-1])


def find_runs(folders: Iterable[Path]) -> list[RunResults]:
    """Every run folder (one holding config.yaml) at or below the given folders, each once, with its results
    (possibly none yet: `compare` leaves those out and says so); a concept-transfer run is one entry per method."""
    folders = [Path(f) for f in folders]
    runs: dict[Path, list[RunResults]] = {}
    for folder in folders:
        if not folder.exists():
            raise ArtifactError(f"{folder} does not exist; give run folders or sweep folders (multirun/<date>/<time>)")
        if not folder.is_dir():
            raise ArtifactError(f"{folder} is a file, not a folder; give the run folder that holds it"
                                f"{f' ({folder.parent.parent})' if folder.parent.name == 'results' else ''}")
        for config in sorted(folder.rglob("config.yaml")):
            if config.is_file() and not _is_hidden(config, folder) and config.parent.resolve() not in runs:
                runs[config.parent.resolve()] = read_runs(config.parent)
    if not runs:
        hint = ""
        if any((f / "results").is_dir() or f.name == "results" for f in folders):
            hint = "; a results folder without config.yaml beside it is not a run folder"
        raise ArtifactError(f"no run folders (config.yaml + results/cycle_N.json or results/transfer.json) under "
                            f"{name_list(folders)}{hint}")
    return [entry for entries in runs.values() for entry in entries]


def where(runs: list[RunResults], conditions: list[str]) -> list[RunResults]:
    """The runs whose settings match every `key=value` (the value as a group label prints it, or as YAML reads it:
    `0.10` is 0.1, `[0.1,1.0]` a list). A condition that is not key=value, a key no run has, or conditions that
    leave no run are one ConfigError line naming what the runs have."""
    known = sorted(set().union(*(r.settings for r in runs)))
    kept = runs
    for condition in conditions:
        key, sep, value = condition.partition("=")
        key, value = key.strip(), value.strip()
        if not (sep and key):
            raise ConfigError(f"--where {condition}: give key=value, e.g. sharpening.type=per_class")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            raise ConfigError(f"--where {condition}: {key} is not a setting of any run"
                              + (f"; the closest are {', '.join(close)}" if close else ""))
        wanted = {value}
        try:
            wanted.add(setting_label({key: yaml.safe_load(value)}, key))
        except yaml.YAMLError:
            pass
        # a transfer method's own setting (transfer.<name>.*) selects among that method's results and leaves the
        # other methods' alone (it is not their setting), so a sweep's other methods stay to compare with
        selected = [r for r in kept if not r.has_setting(key) or setting_label(r.settings, key) in wanted]
        owner = method_of_key(key)
        own = [r for r in kept if owner is not None and r.method == owner]
        if own and not any(r.method == owner for r in selected):
            values = list(dict.fromkeys(setting_label(r.settings, key) for r in own))
            raise ConfigError(f"--where {condition}: no result of {owner} has it; {key} is "
                              f"{', '.join(values)} in these runs")
        kept = selected
    if conditions and not kept:
        raise ConfigError(f"--where {' '.join(conditions)}: no run matches; the settings that differ between these "
                          f"runs are {', '.join(varying_settings(runs)) or 'none (only the seed)'}")
    return kept


def varying_settings(runs: list[RunResults]) -> list[str]:
    """The settings that differ between `runs` (never NOT_A_GROUP); a transfer method's own setting differs when
    it differs between that method's results."""
    keys = sorted(set().union(*(r.settings for r in runs)))
    return [k for k in keys if not k.startswith(NOT_A_GROUP)
            and len({setting_label(r.settings, k) for r in runs if r.has_setting(k)}) > 1]


def setting_label(settings: dict[str, Any], key: str) -> str:
    """A setting's value as group labels print it: `str(value)`, `null` for None, a list as on the command line
    (`[0.1, 1.0]`), `unset` when the run lacks it."""
    if key not in settings:
        return UNSET
    value = settings[key]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join("null" if v is None else str(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _mean_std(values: list[Optional[float]]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the defined (finite) values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


@dataclass
class Comparison:
    group_by: list[str]
    groups: dict[str, list[RunResults]]
    cycle: Optional[int]  # the cycle compared; None: each run's last
    rows: list["MetricRow"]
    notes: list[str] = field(default_factory=list)
    cycles: dict[Path, int] = field(default_factory=dict)  # run folder -> the cycle compared
    kind: str = CYCLES  # the kind of every compared run: CYCLES, or TRANSFER (no cycles: no Δ since cycle 0)

    @property
    def has_cycles(self) -> bool:
        """SAE-ception runs: values at a cycle and changes since cycle 0. Concept-transfer runs have one result."""
        return self.kind != TRANSFER


@dataclass
class MetricRow:
    metric: str
    final: dict[str, tuple[float, float, int]]  # group -> (mean, std, n) at the compared cycle
    change: dict[str, tuple[float, float, int]]  # group -> the same for the change since cycle 0
    start: dict[str, float]  # group -> mean at cycle 0 of the runs that have both (to judge the change's direction)
    end: dict[str, float] = field(default_factory=dict)  # group -> mean at the compared cycle of those same runs


def _check_keys(runs: list[RunResults], group_by: list[str]) -> list[str]:
    """Refuse a key no run has (naming the closest ones); note keys only some runs have."""
    known = sorted(set().union(*(r.settings for r in runs)))
    notes = []
    for key in group_by:
        applicable = [r for r in runs if r.has_setting(key)]  # a transfer method's setting: that method's results
        lacking = [r.folder for r in applicable if key not in r.settings]
        if not any(key in r.settings for r in runs):
            below = [k for k in known if k.startswith(f"{key}.")]
            close = difflib.get_close_matches(key, known, n=4, cutoff=0.5)
            varying = varying_settings(runs)
            raise ConfigError(
                f"--by {key}: not a setting of any run; "
                + (f"{key} holds several settings, give one of them ({', '.join(below[:6])}{', ...' if len(below) > 6 else ''}); "
                   if below else f"the closest are {', '.join(close)}; " if close else "")
                + (f"settings that differ between these runs: {', '.join(varying)}" if varying
                   else "only the seed differs between these runs")
            )
        if lacking:
            notes.append(f"{key} is not a setting of {len(lacking)} of {count_runs(len(applicable))} ({name_list(lacking)}); "
                         f"their group says '{UNSET}'")
    return notes


def _compared_cycles(runs: list[RunResults], cycle: Optional[int]) -> tuple[dict[Path, int], list[str]]:
    """The cycle compared for each run: `cycle`, or each run's last (said in a note when they differ)."""
    available = _cycles(set().union(*(r.by_cycle for r in runs)))
    if cycle is not None:
        if cycle < 0:
            raise ConfigError(f"--cycle {cycle}: cycles are numbered from 0; these runs have cycles {available}")
        lacking = [r for r in runs if cycle not in r.by_cycle]
        if lacking:
            common = _cycles(set.intersection(*(set(r.by_cycle) for r in runs)))
            have = "; ".join(f"{r.folder} has {_cycles(r.by_cycle)}" for r in lacking[:SHOWN])
            more = f"; and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""
            raise ConfigError(f"--cycle {cycle}: no results for cycle {cycle} in {len(lacking)} of {count_runs(len(runs))} "
                              f"({have}{more}); cycles every run has: {common}")
        return {r.folder: cycle for r in runs}, []
    chosen = {r.folder: max(r.by_cycle) for r in runs}
    notes = []
    short = [r for r in runs if r.expected_last is not None and max(r.by_cycle) < r.expected_last]
    if short:
        notes.append(f"{count_runs(len(short), 'stops')} before cycle.max_cycles (still running, or stopped): "
                     + "; ".join(f"{r.folder} has cycles {_cycles(r.by_cycle)} of 0-{r.expected_last}"
                                 for r in short[:SHOWN]) + (f"; and {len(short) - SHOWN} more" if len(short) > SHOWN else ""))
    ends = sorted(set(chosen.values()))
    if len(ends) > 1:
        count = {end: sum(1 for c in chosen.values() if c == end) for end in ends}
        common = set.intersection(*(set(r.by_cycle) for r in runs))
        advice = f"--cycle {max(common)} compares every run at cycle {max(common)}" if common else \
            "no cycle is common to every run"
        notes.append("runs end at different cycles (" + ", ".join(f"cycle {e}: {count_runs(count[e])}" for e in ends)
                     + f"); each is compared at its own last cycle; {advice}")
    return chosen, notes


def run_folders(runs: Iterable[RunResults]) -> list[Path]:
    """The run folders of `runs`, each once (a transfer run is several entries), in order."""
    return list(dict.fromkeys(r.run_folder for r in runs))


def _kind(runs: list[RunResults], cycle: Optional[int]) -> str:
    """The one kind of run compared; mixing SAE-ception and concept-transfer runs, or `--cycle` on transfer runs,
    is one ConfigError line."""
    kinds = {r.kind for r in runs}
    if len(kinds) > 1:
        each = "; ".join(f"{KIND_NAMES[kind]}: {name_list(run_folders(r for r in runs if r.kind == kind))}"
                         for kind in (CYCLES, TRANSFER))
        raise ConfigError(f"these folders hold SAE-ception runs and concept-transfer runs, which have different "
                          f"metrics and cannot share a table ({each}); compare the runs of one kind (give their "
                          "folders, or select them with --where)")
    kind = next(iter(kinds), CYCLES)
    if kind == TRANSFER and cycle is not None:
        raise ConfigError(f"--cycle {cycle}: concept-transfer runs have no cycles (one result per method); "
                          "leave --cycle out")
    return kind


def _pending_note(pending: list[RunResults], kind: str) -> str:
    folders = name_list(r.folder for r in pending)
    if kind != TRANSFER:
        return (f"left out {count_runs(len(pending))} without results yet (still running, or failed before cycle 0 "
                f"was evaluated): {folders}")
    partial = [f"{r.folder} ({', '.join(r.finished_methods)})" for r in pending if r.finished_methods]
    return (f"left out {count_runs(len(pending))} without results/transfer.json yet (still running, or failed; it is "
            f"written when every method has finished): {folders}"
            + (f"; the methods some of them finished (results/methods/) are not used until then: {name_list(partial)}"
               if partial else ""))


def _missing_methods_note(runs: list[RunResults]) -> Optional[str]:
    """Transfer runs whose results/transfer.json lacks methods their config.yaml lists (a resumed run still
    running, with more methods than before)."""
    missing = {run.run_folder: run.missing_methods for run in runs if run.missing_methods}
    lacking = [f"{folder} lacks {', '.join(methods)}" for folder, methods in missing.items()]
    if not lacking:
        return None
    return (f"{count_runs(len(lacking), 'has')} a results/transfer.json without some methods its config.yaml lists "
            f"(resumed with more methods and still running, or stopped): {'; '.join(lacking[:SHOWN])}"
            + (f"; and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""))


def compare(runs: list[RunResults], group_by: Optional[list[str]] = None, cycle: Optional[int] = None) -> Comparison:
    """Per group and metric: mean ± std over runs of the value at `cycle` (default: each run's last)
    and of its change since cycle 0. Runs without results yet are left out (with a note). Concept-transfer runs
    (one entry per method, see the module docstring): per group the mean ± std of each method's result."""
    notes = []
    kind = _kind(runs, cycle)
    pending = [r for r in runs if not r.by_cycle]
    runs = [r for r in runs if r.by_cycle]
    if not runs:
        written = ("results/transfer.json is written when every method has finished" if kind == TRANSFER
                   else "results/cycle_N.json is written when a cycle has been evaluated")
        raise ArtifactError(f"no results yet in {name_list(r.folder for r in pending)} ({written}); "
                            "wait for the runs, or give finished ones")
    if pending:
        notes.append(_pending_note(pending, kind))
    if kind == TRANSFER and (missing := _missing_methods_note(runs)):
        notes.append(missing)
    if kind == TRANSFER:
        runs, repeat_notes = _collapse_repeats(runs)
        notes += repeat_notes
    explicit = group_by is not None
    group_by = list(dict.fromkeys(group_by)) if explicit else varying_settings(runs)
    if kind == TRANSFER and not explicit:
        group_by = _transfer_group_by(runs, group_by)
    if kind == TRANSFER and METHOD not in group_by and len({r.method for r in runs}) > 1:
        # before the methods' own settings, which read as the method's (`procrustes_probe, alpha=3.0`)
        group_by.insert(next((i for i, k in enumerate(group_by) if method_of_key(k)), len(group_by)), METHOD)
        notes.append(f"grouped by {METHOD} as well: a group of several methods would average different methods "
                     f"(--where {METHOD}=NAME compares one method)")
    notes += _check_keys(runs, group_by)
    chosen, cycle_notes = _compared_cycles(runs, cycle)
    notes += cycle_notes
    degenerate = [f"{r.folder} (cycle {', '.join(map(str, r.degenerate))})" for r in runs if r.degenerate]
    if degenerate:
        notes.append(f"{count_runs(len(degenerate), 'has')} a degenerate SAE (no latent fires), whose sae/* metrics are "
                     f"left out (the code-based ones are null already): {name_list(degenerate)}")
    no_start = [r.folder for r in runs if 0 not in r.by_cycle]
    if no_start:
        notes.append(f"{count_runs(len(no_start), 'has')} no cycle 0 results, so no Δ since cycle 0: {name_list(no_start)}")

    by_label: dict[tuple[Optional[str], ...], list[RunResults]] = {}
    for run in runs:
        by_label.setdefault(group_labels(run, group_by), []).append(run)
    ordered = list(by_label.items())
    if kind == TRANSFER:  # the groups of one method's settings side by side (else: in order of first appearance)
        shared = [i for i, key in enumerate(group_by) if method_of_key(key) is None]
        first = {}
        for labels, _ in ordered:
            first.setdefault(tuple(labels[i] for i in shared), len(first))
        ordered.sort(key=lambda item: first[tuple(item[0][i] for i in shared)])
    groups: dict[str, list[RunResults]] = {}
    for labels, members in ordered:
        name = ", ".join(label for label in labels if label is not None) or "all runs"
        while name in groups:  # two different values that print alike (e.g. 1 and "1")
            name += "'"
        groups[name] = members
    if kind == TRANSFER:
        notes += _mixing_notes(groups, group_by)

    metrics = list(dict.fromkeys(m for run in runs for flat in run.by_cycle.values() for m in flat))
    rows = []
    for metric in metrics:
        row = MetricRow(metric, {}, {}, {}, {})
        for name, members in groups.items():
            at = [r.by_cycle[chosen[r.folder]].get(metric) for r in members]
            start = [r.by_cycle.get(0, {}).get(metric) for r in members]
            both = [(s, a) for s, a in zip(start, at) if _finite(s) and _finite(a)]
            row.final[name] = _mean_std(at)
            row.change[name] = _mean_std([a - s for s, a in both])
            row.start[name] = _mean_std([s for s, _ in both])[0]
            row.end[name] = _mean_std([a for _, a in both])[0]
        rows.append(row)
    return Comparison(group_by, groups, cycle, rows, notes, chosen, kind)


def group_labels(run: RunResults, group_by: list[str]) -> tuple[Optional[str], ...]:
    """A run's labels for the grouping keys, as its group's name joins them: each value as `setting_label` prints
    it; for a transfer method's entry, its own method's settings as `key=value` (`alpha=3.0`) and None (left out
    of the name) for another method's."""
    labels: list[Optional[str]] = []
    for key in group_by:
        if not run.has_setting(key):
            labels.append(None)
        elif run.method is not None and method_of_key(key) is not None:
            labels.append(f"{key.split('.', 2)[2]}={setting_label(run.settings, key)}")
        else:
            labels.append(setting_label(run.settings, key))
    return tuple(labels)


def _transfer_group_by(runs: list[RunResults], varying: list[str]) -> list[str]:
    """The default grouping keys of transfer entries: the run-level settings that differ, then transfer.method,
    then each method's own settings that differ between its results - left out when they split none of the
    groups the keys before them make (e.g. transfer.<name>.target_images, which follows concept.target_images)."""
    head = [k for k in varying if method_of_key(k) is None and k != METHOD] + ([METHOD] if METHOD in varying else [])
    for key in (k for k in varying if method_of_key(k) is not None):
        if _splits([r for r in runs if r.method == method_of_key(key)], head, key):
            head.append(key)
    return head


def _splits(runs: list[RunResults], keys: list[str], key: str) -> bool:
    """Whether `key` differs between runs that have the same labels for `keys` (else it follows them)."""
    split: dict[tuple, set] = {}
    for run in runs:
        if run.has_setting(key):
            split.setdefault(group_labels(run, keys), set()).add(setting_label(run.settings, key))
    return any(len(values) > 1 for values in split.values())


def _identity(run: RunResults) -> tuple:
    """What makes a transfer entry the experiment it is: its seed, method and every group-defining setting (its
    own method's and the run-level ones; never the other methods', concept.methods or where it was written)."""
    return tuple(sorted((k, setting_label(run.settings, k)) for k in run.settings
                        if k == "seed" or not k.startswith(NOT_A_GROUP)))


def _same_numbers(a: RunResults, b: RunResults) -> bool:
    """The same metrics with the same values (NaN equal to NaN)."""
    if a.by_cycle.keys() != b.by_cycle.keys():
        return False
    for cycle, metrics in a.by_cycle.items():
        other = b.by_cycle[cycle]
        if metrics.keys() != other.keys():
            return False
        for key, value in metrics.items():
            if not (value == other[key] or (isinstance(value, float) and isinstance(other[key], float)
                                            and math.isnan(value) and math.isnan(other[key]))):
                return False
    return True


def _collapse_repeats(runs: list[RunResults]) -> tuple[list[RunResults], list[str]]:
    """Transfer entries that are one experiment counted several times - the same seed, method and settings (see
    `_identity`) in runs that differ only in another method's settings, e.g. `none` in every run of a sweep over
    procrustes_probe's alpha - counted once: the first by folder order is kept. Only when their numbers are the
    same (a seed's result is deterministic); repeats with other numbers are all kept, and said."""
    by_identity: dict[tuple, list[RunResults]] = {}
    for run in runs:
        by_identity.setdefault(_identity(run), []).append(run)
    dropped, differing, differ_keys = set(), [], {}
    for members in by_identity.values():
        if len(members) < 2:
            continue
        kept: list[RunResults] = []
        for run in members:
            if any(_same_numbers(run, first) for first in kept):
                dropped.add(id(run))
            else:
                kept.append(run)
        if len(kept) > 1:
            differing.append(kept)
        if len(kept) < len(members):  # the settings of the whole runs that differ: other methods' settings
            keys = set().union(*(r.run_settings for r in members))
            differ_keys |= dict.fromkeys(k for k in sorted(keys) if not k.startswith(NOT_A_GROUP)
                                         and len({setting_label(r.run_settings, k) for r in members}) > 1)
    notes = []
    if dropped:
        left_out = [r.folder for r in runs if id(r) in dropped]
        what = (f"other methods' settings ({name_list(differ_keys)})" if differ_keys
                else "their folders (the same settings: a run repeated)")
        notes.append(f"{len(left_out)} result{'s' if len(left_out) > 1 else ''} counted once: the same method, "
                     f"settings and seed with the same numbers as a result already counted (the first by folder "
                     f"order), from runs that differ only in {what}; left out: {name_list(left_out)}")
    if differing:
        each = [f"{kept[0].method} with seed {kept[0].settings.get('seed')} in {name_list(r.run_folder for r in kept)}"
                for kept in differing]
        notes.append(f"results of the same method, settings and seed differ between runs, so each is counted (a "
                     f"seed should give the same numbers: check how the runs were made): {'; '.join(each[:SHOWN])}"
                     + (f"; and {len(each) - SHOWN} more" if len(each) > SHOWN else ""))
    return [r for r in runs if id(r) not in dropped], notes


def _mixing_notes(groups: dict[str, list[RunResults]], group_by: list[str]) -> list[str]:
    """Transfer groups whose results differ in a setting that is not grouped by (an explicit --by without it, e.g.
    `--by transfer.method` over a sweep of procrustes_probe's alpha): their cells average over its values."""
    runs = [r for members in groups.values() for r in members]
    notes, noted = [], []
    for key in sorted(set().union(*(r.settings for r in runs)) - set(group_by)):
        if key.startswith(NOT_A_GROUP) or key == METHOD:
            continue
        mixed = {name: list(dict.fromkeys(setting_label(r.settings, key) for r in members if r.has_setting(key)))
                 for name, members in groups.items()}
        mixed = {name: values for name, values in mixed.items() if len(values) > 1}
        # a setting that follows one already said (old runs lacking a method's YAML lack all its settings) is not
        if not mixed or (noted and not any(_splits(groups[name], noted, key) for name in mixed)):
            continue
        noted.append(key)
        values = list(dict.fromkeys(v for vs in mixed.values() for v in vs))
        which = (f"group {next(iter(mixed))!r} mixes" if len(mixed) == 1
                 else f"groups {name_list(map(repr, mixed))} mix")
        notes.append(f"{which} {key} = {', '.join(values)}: {'its' if len(mixed) == 1 else 'their'} cells average "
                     f"over those values; --by {' '.join(group_by + [key])} keeps them apart")
    return notes


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def is_quantile(metric: str) -> bool:
    """A quantile metric (`monosemanticity_sae/csi_q90`), shown only with --all."""
    return "_q" in metric.split("/", 1)[-1]


def format_comparison(comparison: Comparison, skip_quantiles: bool = True) -> str:
    names = list(comparison.groups)
    sizes = {name: len(comparison.groups[name]) for name in names}
    rows = [r for r in comparison.rows if not (skip_quantiles and is_quantile(r.metric))]
    cells = []  # (label, [cell per group])
    for row in rows:
        label = row.metric + (GROWS_WITH_N_NOTE if grows_with_n(row.metric) else "")  # compare CH at equal N only
        cells.append((label, [_pm(*row.final[n], sizes[n]) for n in names]))
        if comparison.has_cycles:
            cells.append(("  Δ since cycle 0", [_pm(*row.change[n], sizes[n])
                                                + _mark(row.metric, row.start[n], row.end[n]) for n in names]))
    headers = [f"{n} (n={sizes[n]})" for n in names]
    if not comparison.has_cycles:
        return "\n".join(_transfer_legend(comparison) + table_lines(headers, cells))
    compared = sorted(set(comparison.cycles.values()))
    at = (f"cycle {comparison.cycle}" if comparison.cycle is not None
          else f"cycle {compared[0]} (each run's last)" if len(compared) == 1 else "each run's last cycle")
    lines = [
        f"grouped by: {', '.join(comparison.group_by) or 'nothing (one group)'}; "
        f"{count_runs(sum(sizes.values()))} in {len(names)} group{'' if len(names) == 1 else 's'} (n: runs per group)",
        f"values at {at}; a cell: mean ± sample std of the group's runs (their spread, not a confidence interval), "
        "the value alone when n = 1, (n=k) when only k of them define it",
        "Δ since cycle 0: per run, averaged over the runs that have both cycles; "
        "ok/bad: whether the mean moved the better way",
        *(f"note: {note}" for note in comparison.notes),
    ]
    return "\n".join(lines + table_lines(headers, cells))


def _transfer_legend(comparison: Comparison) -> list[str]:
    """The lines above a table of concept-transfer runs: what a group, a cell and each metric family are."""
    runs = [r for members in comparison.groups.values() for r in members]
    names = list(comparison.groups)
    return [
        f"grouped by: {', '.join(comparison.group_by) or 'nothing (one group)'}; "
        f"{count_runs(len(run_folders(runs)))} of concept transfer, one result per method: {len(runs)} result"
        f"{'' if len(runs) == 1 else 's'} in {len(names)} group{'' if len(names) == 1 else 's'} (n: runs per group)",
        "a cell: mean ± sample std of the group's runs (their spread, not a confidence interval), the value alone "
        "when n = 1, (n=k) when only k of them define it",
        "concept/* on the test split: transfer = target images called the target (higher is better), preservation "
        "= accuracy on A's classes (higher), preservation_change = its change from A (higher), specificity = "
        "distractor images called the target (lower); budget/*: what the method used (target_labels: 1 = yes)"
        + ("; validation/*: the same measures on the validation split (choose a method's settings by these)"
           if any(row.metric.startswith("validation/") for row in comparison.rows) else ""),
        *(f"note: {note}" for note in comparison.notes),
    ]


def table_lines(headers: list[str], cells: list[tuple[str, list[str]]], label_header: str = "metric") -> list[str]:
    """A text table: a column of row labels headed `label_header`, then one right-aligned column per header, a
    rule under the header line. `cells`: (label, one cell per header) per row."""
    width = max([len(h) for h in headers] + [len(c) for _, group in cells for c in group])
    label_width = max([len(label) for label, _ in cells] + [len(label_header)])
    header = f"{label_header:<{label_width}}" + "".join(f" | {h:>{width}}" for h in headers)
    rows = [f"{label:<{label_width}}" + "".join(f" | {c:>{width}}" for c in group) for label, group in cells]
    return [header, "-" * len(header), *rows]


def _pm(mean: float, std: float, n: int, size: int) -> str:
    if n == 0:
        return "n/a"
    value = f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
    return value if n == size else f"{value} (n={n})"


def _mark(metric: str, start_mean: float, final_mean: float) -> str:
    judged = verdict(metric, start_mean, final_mean) if not (math.isnan(start_mean) or math.isnan(final_mean)) else ""
    return {"better": " ok", "worse": " bad"}.get(judged, "")
