#!/usr/bin/env bash
# The prepared accelerator run: the paper's model on one GPU or TPU, in one command, within a time
# budget (8 minutes by default). It measures, through benchmarks/run.py:
#
#   1. the training step in bfloat16 at batch 64 without remat (the largest batch that fits, by
#      halving on out-of-memory), with samples/s, utilisation of the device's bf16 peak (MFU) and
#      peak memory; then guided DDIM-50 sampling, images/s at batch 64 and latency at batch 1;
#   2. the same training step with remat (config.model.remat=True).
#
# Each part writes its JSON record to the output folder and appends its row to
# benchmarks/RESULTS.md. A part that would start with too little of the budget left is skipped and
# said; a part that runs past what is left is stopped (timeout) and said. The summary at the end
# lists what ran.
#
# Usage (from anywhere; paths are the repository's):
#   benchmarks/accelerator.sh [--config=configs/default.py] [--batch=64] [--sample_batch=64]
#       [--latency_batch=1] [--sample_steps=50] [--budget_s=480] [--out=DIR] [--wheels=DIR]
#       [--quick] [-- more run.py flags]
#
#   --wheels=DIR  install the wheels in DIR first (offline: --no-index --no-deps, into a folder put
#                 on PYTHONPATH), for a machine that has JAX but lacks some of the project's
#                 packages; benchmarks/accelerator_wheels.sh fetches them on a machine with pip.
#   --quick       a small check of this script itself (CPU, configs/tiny.py-sized settings): 1 warm-up
#                 and 1 timed step, 2 sampling steps, 1 timed call.
#   --out=DIR     where the JSON records and logs go (default benchmarks/results/accelerator-<UTC>).
#
# The project itself need not be installed: the repository root is put on PYTHONPATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="configs/default.py"
BATCH=64
SAMPLE_BATCH=64
LATENCY_BATCH=1
SAMPLE_STEPS=50
BUDGET_S=480
OUT=""
WHEELS=""
QUICK=0
EXTRA=()
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --batch=*) BATCH="${1#*=}" ;;
    --sample_batch=*) SAMPLE_BATCH="${1#*=}" ;;
    --latency_batch=*) LATENCY_BATCH="${1#*=}" ;;
    --sample_steps=*) SAMPLE_STEPS="${1#*=}" ;;
    --budget_s=*) BUDGET_S="${1#*=}" ;;
    --out=*) OUT="${1#*=}" ;;
    --wheels=*) WHEELS="${1#*=}" ;;
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "accelerator.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for pair in "batch:$BATCH" "sample_batch:$SAMPLE_BATCH" "latency_batch:$LATENCY_BATCH" \
  "sample_steps:$SAMPLE_STEPS" "budget_s:$BUDGET_S"; do
  name="${pair%%:*}" value="${pair#*:}"
  if ! [[ "$value" =~ ^[0-9]+$ ]]; then
    echo "accelerator.sh: --$name must be a whole number, got '$value'" >&2
    exit 2
  fi
done

cd "$ROOT"
if [[ ! -f "$CONFIG" ]]; then
  echo "accelerator.sh: no config file '$CONFIG' (relative to the repository root)" >&2
  exit 2
fi
START=$(date +%s)
OUT="${OUT:-benchmarks/results/accelerator-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

if [[ -n "$WHEELS" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]} == 0)); then
    echo "accelerator.sh: --wheels=$WHEELS holds no .whl files" >&2
    exit 2
  fi
  SITE="$(mktemp -d)/site"
  echo "installing ${#wheels[@]} wheels from $WHEELS into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
import platform, jax, flax
print(f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}")
print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})")
EOF

COMMON=(--config="$CONFIG" --config.model.dtype=bfloat16 --skip=pipeline)
if ((QUICK)); then
  COMMON+=(--warmup_steps=1 --timed_steps=1 --sample_repeats=1 --time_budget_s=1)
else
  # Each timed series (train steps, sampling calls) stops after 30 s: the budget goes to the
  # compiles (the paper's step, the sampler at two batch sizes) and to the remat part.
  COMMON+=(--time_budget_s=30)
fi

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

declare -a SUMMARY=()

# part NAME MIN_SECONDS run.py-flags...: runs one part within what is left of the budget.
part() {
  local name="$1" min_s="$2"
  shift 2
  local left
  left=$(remaining)
  if ((left < min_s)); then
    SUMMARY+=("$name: skipped, ${left} s of the budget left (needs at least ${min_s} s)")
    return 0
  fi
  echo "== $name (${left} s of the budget left)"
  local rc=0
  timeout --signal=TERM --kill-after=20 "$left" \
    "$PYTHON" benchmarks/run.py "${COMMON[@]}" --output="$OUT/$name.json" "$@" "${EXTRA[@]}" \
    2>&1 | tee "$OUT/$name.log" || rc=${PIPESTATUS[0]}
  if ((rc == 0)); then
    SUMMARY+=("$name: done, $OUT/$name.json")
  elif ((rc == 124 || rc == 137)); then
    SUMMARY+=("$name: stopped at the end of the budget (log: $OUT/$name.log)")
  else
    SUMMARY+=("$name: failed with status $rc (log: $OUT/$name.log)")
  fi
}

# At least a minute for each part: a compile of the paper's step alone takes that on a GPU.
MIN_S=$((QUICK ? 1 : 60))
part train_sample "$MIN_S" --config.train.batch_size="$BATCH" --config.model.remat=False \
  --fit_batch --sample_batch="$SAMPLE_BATCH" --latency_batch="$LATENCY_BATCH" \
  --sample_steps="$SAMPLE_STEPS" --note="accelerator.sh: bf16, no remat; DDIM-$SAMPLE_STEPS guided"
part train_remat "$MIN_S" --config.train.batch_size="$BATCH" --config.model.remat=True \
  --fit_batch --skip=pipeline,sample --note="accelerator.sh: bf16, remat"

echo "== summary ($(($(date +%s) - START)) s of the ${BUDGET_S} s budget)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
# The results rows the parts appended (run.py prints each last).
for log in "$OUT"/train_sample.log "$OUT"/train_remat.log; do
  [[ -f "$log" ]] && grep '^|' "$log" | tail -n 1
done
for line in "${SUMMARY[@]}"; do
  [[ "$line" == *": done,"* ]] || exit 1
done
