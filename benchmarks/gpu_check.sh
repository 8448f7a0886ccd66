#!/usr/bin/env bash
# The GPU check (issue 16): on a one-GPU machine, in under 8 minutes, with nothing downloaded:
#   1. CUDA and bf16 are there (torch, nvidia-smi);
#   2. `mlflow run . -e finetune --env-manager local` trains on synthetic data with mixed_precision=auto,
#      and its plan.json says device cuda and bf16;
#   3. engine vs bare loop training throughput at 256 and 512 px (benchmarks/train_throughput.py);
#   4. loader throughput with 0, 8 and 16 workers (benchmarks/data_loading.py);
#   5. pseudo-labelling throughput on the GPU (benchmarks/pseudo_label_memory.py).
# Every step has its own timeout and log; a failed step is reported as failed and the next one runs.
# At the end it prints a markdown block to paste into benchmarks/README.md (also written to $OUT/gpu_check.md).
#
#   bash benchmarks/gpu_check.sh                       # logs under $OUT, or /tmp/gpu_check
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh     # every step at tiny size: proves the commands on a CPU
#
# Python: $LESION_PYTHON if set, else .venv/bin/python, else `make venv` first (not counted in the 8 minutes).
# Data: synthetic, written here; GPU_CHECK_DATA=FOLDER uses that folder for steps 3 and 4 instead.
# GPU_CHECK_TIMEOUT_S=N caps every step's timeout at N seconds.
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGS=${OUT:-/tmp/gpu_check}
SMOKE=${GPU_CHECK_SMOKE:-0}
mkdir -p "$LOGS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")  # checkpoints, caches, stores: removed at the end
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS

if [ "$SMOKE" = 1 ]; then
  # tiny sizes; CPU timeouts (a shared 2-core machine is slow)
  N=24 GEN_SIZE=64 FT_DATA="synthetic:n=24,size=64,seed=0" FT_EPOCHS=1 FT_BATCH=8
  TP_SMALL=64 TP_LARGE=96 TP_BATCH=4 TP_STEPS=2 LOAD_SIZE=64 WORKERS=0,2
  PL_POOLS=16 PL_SIZE=64 PL_BATCH=4
  T_ENV=120 T_DATA=120 T_FT=400 T_TP_SMALL=300 T_TP_LARGE=300 T_LOAD=200 T_PL=300
else
  # 800 images at 512 px: 640 training images, one engine epoch of 40 steps of 16 at either size
  N=800 GEN_SIZE=512 FT_DATA="synthetic:n=160,size=256,seed=0" FT_EPOCHS=3 FT_BATCH=16
  TP_SMALL=256 TP_LARGE=512 TP_BATCH=16 TP_STEPS=40 LOAD_SIZE=256 WORKERS=0,8,16
  PL_POOLS=300 PL_SIZE=256 PL_BATCH=32
  # worst case, every step timing out: 465 s
  T_ENV=20 T_DATA=45 T_FT=140 T_TP_SMALL=60 T_TP_LARGE=80 T_LOAD=50 T_PL=75
fi
CAP=${GPU_CHECK_TIMEOUT_S:-0}

declare -a ORDER=()
declare -A STATUS=() WALL=() NOTE=()

# step NAME TIMEOUT_S COMMAND...: run it with its own timeout, its output in $LOGS/NAME.log; never stops the script.
step() {
  local name=$1 limit=$2
  shift 2
  local begin=$SECONDS rc shown="$*"
  if [ "$CAP" -gt 0 ] && [ "$CAP" -lt "$limit" ]; then limit=$CAP; fi
  [[ $shown == *$'\n'* ]] && shown="${shown%%$'\n'*} <script>"  # an inline Python script: its first line
  ORDER+=("$name")
  echo "== $name (timeout ${limit}s): $shown" >&2
  { echo "\$ $shown"; echo; } >"$LOGS/$name.log"
  timeout --kill-after=15 "$limit" "$@" >>"$LOGS/$name.log" 2>&1
  rc=$?
  WALL[$name]=$((SECONDS - begin))
  if [ "$rc" -eq 0 ]; then
    STATUS[$name]=ok
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    STATUS[$name]="FAILED (timed out after ${limit} s)"
  else
    STATUS[$name]="FAILED (exit $rc)"
  fi
  NOTE[$name]=""
  echo "   $name: ${STATUS[$name]} in ${WALL[$name]} s (log: $LOGS/$name.log)" >&2
}

fail() {  # fail NAME WHY: a step that ran but did not show what it should
  STATUS[$1]="FAILED ($2)"
}

# A benchmark's caption lines, its markdown table and its footnote, from its log.
tables() {
  local log=$LOGS/$1.log
  if ! grep -q '^|' "$log"; then
    echo "(no table: ${STATUS[$1]}; see $1.log)"
    return
  fi
  grep -E '^(machine:|U-Net|images:|device:)' "$log" | sed "s|$DATA|DATA|; s/\$/  /"  # two spaces: a line break
  echo
  grep -E '^\|' "$log"
  if grep -q '^one-off' "$log"; then
    echo
    grep -E '^one-off' "$log"
  fi
}

# ---------------------------------------------------------------- 0. Python
cd "$REPO" || exit 1
if [ -n "${LESION_PYTHON:-}" ]; then
  PY=$LESION_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then
  PY=$REPO/.venv/bin/python
else
  step install 900 make venv
  PY=$REPO/.venv/bin/python
fi
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's lesion, also in subprocesses
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" LESION_CACHE_DIR="$WORK/cache"
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
unset MLFLOW_RUN_ID MLFLOW_EXPERIMENT_NAME MLFLOW_EXPERIMENT_ID
cd "$WORK" || exit 1  # mlflow run's ./mlruns and every benchmark's scratch land here

# ---------------------------------------------------------------- 1. CUDA and bf16
step cuda "$T_ENV" "$PY" -c '
import torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {ok}")
if ok:
    p = torch.cuda.get_device_properties(0)
    print(f"device {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, bf16 supported {torch.cuda.is_bf16_supported()}")
    x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    print(f"bf16 matmul on the GPU: {(x @ x).float().abs().mean().item():.3f}")
from lesion.train.engine import resolve_mixed_precision, resolve_workers
mixed = resolve_mixed_precision("auto")
print(f"lesion resolves mixed_precision=auto to {mixed}, num_workers=-1 to {resolve_workers(-1)}")
'
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOGS/cuda.log" 2>&1
fi
NOTE[cuda]=$(grep -E '^(torch|device|lesion resolves)' "$LOGS/cuda.log" | paste -sd ';' | sed 's/;/; /g')
if [ "$SMOKE" != 1 ] && ! grep -q "cuda available True" "$LOGS/cuda.log"; then
  fail cuda "no CUDA device"
fi

# ---------------------------------------------------------------- 2. data for steps 3 and 4
if [ -n "${GPU_CHECK_DATA:-}" ]; then
  DATA=$GPU_CHECK_DATA
else
  DATA=$WORK/data
  step data "$T_DATA" "$PY" -c '
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from PIL import Image
from lesion.data.synthetic import generate_one

root, n, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(root / "images").mkdir(parents=True)
(root / "masks").mkdir()

def one(i):  # what `synthetic:n=..,size=..` writes, on every core
    image, mask = generate_one(i, size, 0)
    Image.fromarray(image).save(root / "images" / f"SYN_{i:05d}.png", compress_level=1)
    Image.fromarray(mask * 255).save(root / "masks" / f"SYN_{i:05d}_segmentation.png", compress_level=1)

start = time.perf_counter()
with ProcessPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(one, range(n), chunksize=4))
print(f"{n} synthetic images at {size} px in {time.perf_counter() - start:.1f} s ({os.cpu_count()} processes)")
' "$DATA" "$N" "$GEN_SIZE"
  NOTE[data]=$(tail -n 1 "$LOGS/data.log")
fi

# ---------------------------------------------------------------- 3. bf16 training through mlflow run
FT_OUT=$WORK/outputs
step finetune "$T_FT" "$BIN/mlflow" run "$REPO" -e finetune --env-manager local --experiment-name gpu-check \
  -P "data=$FT_DATA" -P "epochs=$FT_EPOCHS" -P "batch_size=$FT_BATCH" -P "output_dir=$FT_OUT" -P run_name=gpu-check
plan=$FT_OUT/finetune/gpu-check/plan.json
if [ -f "$plan" ]; then
  cp "$plan" "$LOGS/finetune_plan.json"
  cp "$FT_OUT/finetune/gpu-check/result.json" "$LOGS/finetune_result.json" 2>/dev/null
  NOTE[finetune]=$("$PY" - "$plan" "$FT_OUT/finetune/gpu-check/result.json" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))
try:
    result = json.load(open(sys.argv[2]))
    score = f", val Jaccard {result['val_jaccard']:.3f} (kept epoch {result['epoch'] + 1})"
except (OSError, KeyError, ValueError):
    score = ", no result.json"
print(f"device {plan['device']}, mixed_precision {plan['mixed_precision']}, {plan['num_workers']} loader workers, "
      f"{plan['train_images']} training images at {plan['image_size']} px, batch {plan['batch_size']}, "
      f"{plan['epochs']} epochs{score}")
EOF
)
  if [ "$SMOKE" != 1 ] && ! [[ ${NOTE[finetune]} == "device cuda"*"mixed_precision bf16"* ]]; then
    fail finetune "not bf16 on cuda"
  fi
else
  NOTE[finetune]="no plan.json"
  [ "${STATUS[finetune]}" = ok ] && fail finetune "no plan.json"
fi

# ---------------------------------------------------------------- 4. engine vs bare loop
for size in "$TP_SMALL" "$TP_LARGE"; do
  limit=$T_TP_SMALL
  [ "$size" = "$TP_LARGE" ] && limit=$T_TP_LARGE
  step "throughput_${size}px" "$limit" "$PY" -m benchmarks.train_throughput --data "$DATA" --size "$size" \
    --batch "$TP_BATCH" --steps "$TP_STEPS"
  NOTE[throughput_${size}px]=$(grep -E '^\| ratio' "$LOGS/throughput_${size}px.log" | awk -F'|' '{gsub(/ /, "", $3); print "engine/bare " $3}')
done

# ---------------------------------------------------------------- 5. loader workers
step loader "$T_LOAD" "$PY" -m benchmarks.data_loading --data "$DATA" --size "$LOAD_SIZE" --workers "$WORKERS"
NOTE[loader]=$(grep -E '^\| preprocessing cache' "$LOGS/loader.log" | awk -F'|' '{gsub(/^ +| +$/, "", $2); gsub(/ /, "", $3); print $2 ": " $3}' | paste -sd ';' | sed 's/;/; /g')

# ---------------------------------------------------------------- 6. pseudo-labelling
step pseudo_label "$T_PL" "$PY" -m benchmarks.pseudo_label_memory --pools "$PL_POOLS" --size "$PL_SIZE" \
  --batch "$PL_BATCH"
NOTE[pseudo_label]=$(grep -E '^\| [0-9]' "$LOGS/pseudo_label.log" | awk -F'|' '{gsub(/ /, ""); print "pool " $2 ": " $6 " images/s, peak RSS growth " $5 " MiB"}')
NOTE[pseudo_label]+=$(grep -E '^device:' "$LOGS/pseudo_label.log" | sed 's/^device: \([^,]*\).*/ on \1/')

# ---------------------------------------------------------------- the markdown block
{
  machine=$("$PY" -c 'from benchmarks.common import machine; print(machine())' 2>/dev/null || echo unknown)
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
  echo "### GPU check: \`benchmarks/gpu_check.sh\`$([ "$SMOKE" = 1 ] && echo ' (GPU_CHECK_SMOKE=1: tiny sizes, not a measurement)')"
  echo
  echo "**Machine**: $machine; $(date -u +%Y-%m-%d); commit $commit; $((SECONDS - started)) s in all."
  echo
  echo "| step | status | s | what it showed |"
  echo "|---|---|---|---|"
  for name in "${ORDER[@]}"; do
    echo "| $name | ${STATUS[$name]} | ${WALL[$name]} | ${NOTE[$name]:-} |"
  done
  echo
  echo "Fine-tuning: \`mlflow run . -e finetune --env-manager local -P data=$FT_DATA -P epochs=$FT_EPOCHS -P batch_size=$FT_BATCH\`"
  echo "(mixed_precision=auto). Data for the benchmarks: $([ -n "${GPU_CHECK_DATA:-}" ] && echo "$DATA" || echo "$N synthetic images at $GEN_SIZE px")."
  for name in "throughput_${TP_SMALL}px" "throughput_${TP_LARGE}px" loader pseudo_label; do
    echo
    [ -f "$LOGS/$name.log" ] || continue
    echo "\`$(head -n 1 "$LOGS/$name.log" | sed "s|^\\$ ||; s|$PY|python|; s|$DATA|DATA|")\`"
    echo
    tables "$name"
  done
} >"$LOGS/gpu_check.md"
echo
cat "$LOGS/gpu_check.md"
failed=0
for name in "${ORDER[@]}"; do
  [ "${STATUS[$name]}" = ok ] || failed=$((failed + 1))
done
echo
echo "gpu_check: $failed of ${#ORDER[@]} steps failed; logs in $LOGS" >&2
[ "$failed" -eq 0 ]
