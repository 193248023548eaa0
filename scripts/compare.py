"""Compare the runs of a sweep: mean ± std per metric per group, at the last cycle and since cycle 0; with
--baseline, each group's difference from a baseline group, paired by seed, with its 95% confidence interval.

    python scripts/compare.py multirun/2026-11-21/20-00-00
    python scripts/compare.py multirun/2026-11-21/20-00-00 --by sharpening.type cycle.aux_loss_weight
    python scripts/compare.py outputs/run_a outputs/run_b --cycle 2 --all
    python scripts/compare.py multirun/2026-11-21/20-00-00 --baseline sharpening.type=per_class
    python scripts/compare.py multirun/a multirun/b --where cycle.aux_loss=mse --baseline sharpening.type=class_mean
    python scripts/compare.py multirun/2026-11-21/20-00-00 --baseline "random, 0.1" --metrics sae/mse --out figs
    python scripts/compare.py multirun/2026-11-21/20-00-00 --wandb             # also log the table to wandb
    python scripts/compare.py multirun/2026-11-30/09-00-00 --baseline transfer.method=none   # concept-transfer runs

Groups are the settings that differ between the runs (the seed never groups; it is what is averaged).
Each group's header gives its number of runs n; a cell is the mean ± the sample std of its runs (one run:
its value alone).

--baseline GROUP (a group label exactly as the table prints it, or key=value[,key=value] matching one group)
adds a second table below: per other group and metric, d = value(group) − value(baseline) for each seed both
have, the mean of d over the n pairs and its 95% interval mean ± t(0.975, n−1)·sd/√n (Student's t);
`*` marks an interval that excludes 0, `ok`/`bad` whether that difference goes the metric's better way.
Seeds only one side has, or repeated within a group, are left out and said in `note:` lines. The same numbers
go to OUT/paired_vs_<baseline>.csv (one row per group × metric) and a PNG of the differences with their error
bars (one panel per --metrics key; default: accuracy, the SAE's CSI / U / ARI means and the probe accuracies).

--where KEY=VALUE ... keeps only the runs with those settings (e.g. one objective and weight of a larger sweep).

Concept-transfer runs (scripts/transfer_concept.py, e.g. a `--multirun seed=0,1,2,3,4` sweep) are compared the
same way, one entry per method of each run (settings: the run's plus transfer.method=<name>), so each method is
a group (a column) and its rows are the method's measures concept/transfer, concept/preservation,
concept/preservation_change, concept/specificity and its budget/* items, mean ± std over the seeds. They have no
cycles: no "Δ since cycle 0" rows, and no --cycle. `--baseline transfer.method=none` (or the label, `none`,
`finetune_head`) gives each method's paired difference from that method with its 95% interval; the PNG's default
panels are the four concept/* measures. A run without results/transfer.json yet (still running) is left out
with a note, even if some of its methods have finished. SAE-ception runs and concept-transfer runs cannot be
compared in one table (one line, exit status 2).

--wandb also logs the table (and, with --baseline, the paired CSV rows and PNG) as a wandb run named
compare-<first folder>, job_type "compare", in the project, entity and mode the compared runs were logged with
(their config.yaml), in their shared group (a sweep's jobs share one); offline, under the first folder.
--wandb-mode offline|online overrides the runs' mode (needed when they were made with wandb disabled).

A damaged file, a --by key no run has, a --where that matches no run, a --cycle some runs lack (or any --cycle
for concept-transfer runs), a --baseline that names no single group, or SAE-ception and concept-transfer runs
together is one line and exit status 2; what is unusual but comparable (runs still running, runs ending at different
cycles, unpaired seeds) is a `note:`.
"""

import argparse
import os
import sys
from pathlib import Path

from sae_ception.errors import ConfigError, SAECeptionError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison, where
from sae_ception.evaluation.compare_paired import (figure_metrics, format_paired, paired_comparison, paired_csv,
                                                   select_baseline, write_paired)
from sae_ception.evaluation.compare_wandb import log_comparison, wandb_target


def _paired(comparison, args) -> tuple[str, str, Path]:
    """The paired table with the paths of its CSV and PNG (written here), the CSV's text and the PNG's path."""
    skip = not args.all
    paired = paired_comparison(comparison, select_baseline(comparison, args.baseline))
    metrics = figure_metrics(paired, args.metrics)
    out = args.out if args.out is not None else args.folders[0]
    try:
        written = write_paired(paired, out, metrics, skip_quantiles=skip)
    except OSError as ex:
        where = ex.filename or out
        raise ConfigError(f"--out {out}: cannot write {where} ({ex.strerror or ex}); "
                          "give --out a folder you can write to") from None
    text = format_paired(paired, skip_quantiles=skip) + "".join(f"\nwrote {path}" for path in written)
    return text, paired_csv(paired, skip_quantiles=skip), written[-1]


def _log_to_wandb(comparison, target, args, paired) -> str:
    """One line saying where the comparison was logged (compare_wandb.log_comparison)."""
    csv_text, figure = paired if paired is not None else (None, None)
    try:
        return log_comparison(comparison, target, args.folders, skip_quantiles=not args.all, paired_csv=csv_text,
                              figure=figure)
    except OSError as ex:
        raise ConfigError(f"--wandb: cannot write {ex.filename or args.folders[0]} ({ex.strerror or ex}); "
                          "give a first folder you can write to, or --wandb-mode online") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path,
                        help="run folders, or folders holding them (a multirun sweep): SAE-ception runs or "
                             "concept-transfer runs (scripts/transfer_concept.py), not both")
    parser.add_argument("--by", nargs="*", default=None, metavar="KEY",
                        help="settings to group by, e.g. sharpening.type (default: those that differ)")
    parser.add_argument("--cycle", type=int, default=None,
                        help="cycle to compare (default: each run's last; concept-transfer runs have none)")
    parser.add_argument("--all", action="store_true", help="also show the quantile metrics")
    parser.add_argument("--where", nargs="+", default=None, metavar="KEY=VALUE",
                        help="compare only the runs with these settings, e.g. cycle.aux_loss=mse cycle.aux_loss_weight=1.0")
    parser.add_argument("--baseline", default=None, metavar="GROUP",
                        help="also show each group's difference from this group, paired by seed, with its 95%% CI: "
                             "a group label as the table prints it (e.g. 'random, 0.1') or key=value[,key=value] "
                             "(concept-transfer runs: e.g. transfer.method=none)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                        help="with --baseline: the PNG's panels, e.g. performance/accuracy sae/mse (default: "
                             "accuracy, the SAE's CSI / U / ARI means, the probe accuracies; concept-transfer runs: "
                             "the four concept/* measures)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="with --baseline: folder for paired_vs_<baseline>.csv and .png (default: the first folder)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table (and the paired CSV and PNG) to the runs' wandb project and group")
    parser.add_argument("--wandb-mode", default=None, metavar="MODE",
                        help="with --wandb: offline | online | disabled instead of the runs' own wandb.mode")
    args = parser.parse_args()
    if not args.folders:
        parser.error("give at least one run or sweep folder (with --by, put the folders first: "
                     "compare.py FOLDER --by KEY)")
    paired = None
    try:
        for flag, value in (("--metrics", args.metrics), ("--out", args.out)):
            if value is not None and args.baseline is None:
                raise ConfigError(f"{flag}: only with --baseline GROUP (it chooses the paired PNG's panels / folder); "
                                  "add --baseline, or leave it out")
        if args.wandb_mode is not None and not args.wandb:
            raise ConfigError(f"--wandb-mode {args.wandb_mode}: only with --wandb (it sets where the table is "
                              "logged); add --wandb, or leave it out")
        runs = find_runs(args.folders)
        comparison = compare(where(runs, args.where or []), args.by, args.cycle)
        compared = [run for members in comparison.groups.values() for run in members]
        target = wandb_target(compared, args.wandb_mode) if args.wandb else None  # refused before any output
        text = format_comparison(comparison, skip_quantiles=not args.all)
        if args.baseline is not None:
            paired_text, *paired = _paired(comparison, args)
            text += "\n\n" + paired_text
    except SAECeptionError as ex:
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(2)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the reader stopped early (`| head`): not an error; send what Python still wants to flush nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    if target is not None:
        try:
            print(_log_to_wandb(comparison, target, args, paired), flush=True)
        except SAECeptionError as ex:
            print(f"error: {ex}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
