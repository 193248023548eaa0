"""Compare the runs of a sweep: mean ± std per metric per group, at the last cycle and since cycle 0.

    python scripts/compare.py multirun/2026-11-21/20-00-00
    python scripts/compare.py multirun/2026-11-21/20-00-00 --by sharpening.type cycle.aux_loss_weight
    python scripts/compare.py outputs/run_a outputs/run_b --cycle 2 --all

Groups are the settings that differ between the runs (the seed never groups; it is what is averaged).
"""

import argparse
import sys
from pathlib import Path

from sae_ception.errors import SAECeptionError
from sae_ception.evaluation.compare import compare, find_runs, format_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding them (a multirun sweep)")
    parser.add_argument("--by", nargs="*", default=None, help="settings to group by (default: those that differ)")
    parser.add_argument("--cycle", type=int, default=None, help="cycle to compare (default: each run's last)")
    parser.add_argument("--all", action="store_true", help="also show the quantile metrics")
    args = parser.parse_args()
    try:
        print(format_comparison(compare(find_runs(args.folders), args.by, args.cycle), skip_quantiles=not args.all))
    except SAECeptionError as ex:
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
