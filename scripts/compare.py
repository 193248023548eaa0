"""Compare the runs of a sweep: mean ± std per metric per group, at the last cycle and since cycle 0.

    python scripts/compare.py multirun/2026-11-21/20-00-00
    python scripts/compare.py multirun/2026-11-21/20-00-00 --by sharpening.type cycle.aux_loss_weight
    python scripts/compare.py outputs/run_a outputs/run_b --cycle 2 --all

Groups are the settings that differ between the runs (the seed never groups; it is what is averaged).
Each group's header gives its number of runs n; a cell is the mean ± the sample std of its runs (one run:
its value alone). A damaged file, a --by key no run has or a --cycle some runs lack is one line and exit
status 2; what is unusual but comparable (runs still running, runs ending at different cycles) is a `note:`.
"""

import argparse
import os
import sys
from pathlib import Path

from sae_ception.errors import SAECeptionError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="run folders, or folders holding them (a multirun sweep)")
    parser.add_argument("--by", nargs="*", default=None, metavar="KEY",
                        help="settings to group by, e.g. sharpening.type (default: those that differ)")
    parser.add_argument("--cycle", type=int, default=None, help="cycle to compare (default: each run's last)")
    parser.add_argument("--all", action="store_true", help="also show the quantile metrics")
    args = parser.parse_args()
    if not args.folders:
        parser.error("give at least one run or sweep folder (with --by, put the folders first: "
                     "compare.py FOLDER --by KEY)")
    try:
        text = format_comparison(compare(find_runs(args.folders), args.by, args.cycle), skip_quantiles=not args.all)
    except SAECeptionError as ex:
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(2)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the reader stopped early (`| head`): not an error; send what Python still wants to flush nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
