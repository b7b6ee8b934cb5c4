#!/usr/bin/env bash
# The default model's full recipe on one CUDA GPU, in one command, in under 10 minutes (H100/H200 class):
# train configs/default_multitask.yaml (continuing from models/mffseg_default.safetensors), evaluate the
# new AND the starting weights on the held-out sets (tools/heldout.py), export the fp16 default file.
# Everything lands in one folder to bring back: $OUT (default runs/gpu_<date>).
#
#   scripts/gpu_train.sh                 # on the GPU machine (no internet: its own Python with CUDA torch)
#   DRY_RUN=1 scripts/gpu_train.sh       # the same steps on the CPU, tiny: run it before spending GPU time
#
# Settings (environment): OUT, PYTHON (default python3; .venv/bin/python for DRY_RUN when present),
# DATA_ROOT (default shared/data or ../shared/data: cholecseg8k/, cholec_instance_seg/), ITERS (3000),
# BATCH (16), CROP (384x480: the GPU affords whole train_size frames), TRAIN_MINUTES (6: the run stops
# and writes its weights then, whatever the iteration), INIT_WEIGHTS (models/mffseg_default.safetensors;
# empty: from scratch), WORKERS (CPU cores - 2, at most 14), FRAMES (32 held-out frames per synthetic set).
# Afterwards: compare $OUT/heldout_new/summary.md with $OUT/heldout_init/summary.md and, if better, copy
# $OUT/mffseg_default.safetensors over models/ and update models/README.md (the numbers are in $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-runs/gpu_$(date -u +%Y%m%d_%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_train.log
exec > >(tee -a "$LOG") 2>&1

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
if [ -z "${DATA_ROOT:-}" ]; then
  DATA_ROOT=../shared/data
  [ -d shared/data ] && DATA_ROOT=shared/data
fi
INIT_WEIGHTS=${INIT_WEIGHTS-models/mffseg_default.safetensors}
say() { echo "[gpu_train $(date -u +%H:%M:%S)] $*"; }

say "python: $PYTHON; data root: $DATA_ROOT; out: $OUT; dry run: $DRY_RUN"
"$PYTHON" - "$DRY_RUN" <<'EOF'
import importlib, sys
missing = [m for m in ('torch', 'numpy', 'cv2', 'safetensors', 'yaml', 'tqdm', 'matplotlib')
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f'missing Python modules: {", ".join(missing)} (no internet: install them from wheels first)')
import torch
if sys.argv[1] != '1' and not torch.cuda.is_available():
    sys.exit('no CUDA device visible to torch (DRY_RUN=1 runs the CPU rehearsal)')
print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu',
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
EOF

TRAIN=(--config configs/default_multitask.yaml --out "$OUT/run" --data-root "$DATA_ROOT"
       --set checkpoint_every=500 --set log_every=50 --set val_every=0)
[ -d "$DATA_ROOT/cholecseg8k" ] || {
  say "no $DATA_ROOT/cholecseg8k: training on synthetic scenes only (no real pixels)"
  TRAIN+=(--data 'synth:?frames=8192&seed=1&size=384x480'); }
if [ "$DRY_RUN" = 1 ]; then
  # Tiny: 64x96 frames, 2 iterations, 2 held-out frames, the same code paths and files.
  TRAIN+=(--device cpu --iters 2 --batch-size 2 --workers 0 --set 'train_size=[64, 96]' --set 'crop_size=[64, 96]'
          --val 'synth:?frames=2&seed=999&size=64x96')
  if [ -d "$DATA_ROOT/cholecseg8k" ]; then
    TRAIN+=(--data 'synth:?frames=4&seed=1&size=64x96' --data "composite:$DATA_ROOT?frames=4&seed=2&size=64x96")
  fi
  DEVICE=cpu; FRAMES=${FRAMES:-1}; SIZES=; MINUTES=${TRAIN_MINUTES:-5}  # default input only (64x96)
else
  workers=$(( $(nproc) - 2 )); [ "$workers" -gt 14 ] && workers=14
  crop=${CROP:-384x480}
  TRAIN+=(--device cuda --iters "${ITERS:-3000}" --batch-size "${BATCH:-16}" --workers "${WORKERS:-$workers}"
          --set "crop_size=[${crop%x*}, ${crop#*x}]")
  DEVICE=cuda; FRAMES=${FRAMES:-32}; SIZES=256x320,384x480,512x640; MINUTES=${TRAIN_MINUTES:-6}
fi
[ -n "$INIT_WEIGHTS" ] && TRAIN+=(--init-weights "$INIT_WEIGHTS")

# The watchdog asks the run to stop (it then writes its weights) when the time budget is spent.
# (Its output goes nowhere: a sleeping child must not hold this script's output pipe open.)
( sleep $(( MINUTES * 60 )) & s=$!; trap 'kill $s; exit 0' TERM; wait $s; touch "$OUT/run/STOP" ) >/dev/null 2>&1 &
watchdog=$!
trap 'kill $watchdog 2>/dev/null || true' EXIT
say "train: ${TRAIN[*]}"
start=$(date +%s)
"$PYTHON" -m mffseg_ros.cli train "${TRAIN[@]}"
say "trained in $(( $(date +%s) - start )) s"
kill $watchdog 2>/dev/null || true

for which in new init; do
  weights=$OUT/run/weights.safetensors
  if [ "$which" = init ]; then
    [ -n "$INIT_WEIGHTS" ] || continue
    weights=$INIT_WEIGHTS
  fi
  say "held-out evaluation of the $which weights"
  "$PYTHON" -m mffseg_ros.tools.heldout --weights "$weights" --out "$OUT/heldout_$which" --frames "$FRAMES" \
      --sizes "$SIZES" --data-root "$DATA_ROOT" --device "$DEVICE" > "$OUT/heldout_$which.txt"
done
"$PYTHON" -m mffseg_ros.cli export --fp16 --weights "$OUT/run/weights.safetensors" \
    --metrics "heldout=$OUT/heldout_new/summary.json" "$OUT/mffseg_default.safetensors"
cat "$OUT/heldout_new/summary.md"
say "done in $(( $(date +%s) - start )) s: $OUT"
