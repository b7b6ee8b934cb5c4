#!/usr/bin/env bash
# The GPU run in one command: on a CUDA machine (Python 3.12 with its own CUDA torch, no internet) it
# installs the carried wheels (.whl/gpu_wheels.tar.xz from scripts/fetch_wheels.sh), runs the CUDA
# tests (AMP training step, CUDA graphs, fast-path agreement), `mffseg bench` model-only (1024x1280
# and 512x640; fp32/fp16/bf16; eager / CUDA graphs / torch.compile; main / aux; the peers) and the ROS
# 2 end-to-end bench (stereo 1280x1024 at 30 and 60 Hz) when rclpy is importable. Every step has its
# own time limit inside an overall 8-minute budget; a step that fails or runs out is recorded and the
# next one runs. Results go to $OUT (else results/gpu_check): summary.md (every step, its command,
# status and seconds, then the benchmark tables), gpu_check.tar.gz (all logs, bench.json/md/png) and
# the tables as bench_*.md: at most 8 files.
#
# Usage: scripts/gpu_check.sh            on the GPU machine
#        scripts/gpu_check.sh --dry-run  on the CPU: the same steps at tiny sizes (the tests run this)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = --dry-run ] && dry=1
out=${OUT:-results/gpu_check}
py=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-470}  # under 8 minutes, with room for packing the results
start=$(date +%s)
work=$(mktemp -d)
mkdir -p "$out" "$work/logs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST RMW_IMPLEMENTATION=rmw_fastrtps_cpp
summary=$work/summary.md
echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC')$([ $dry = 1 ] && echo ' (dry run on the CPU)')" > "$summary"
printf '\n| step | status | seconds | command |\n|---|---|---|---|\n' >> "$summary"

# step NAME LIMIT_S CMD...: runs CMD with the smaller of LIMIT_S and what is left of the budget
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    echo "| $name | skipped: time budget spent | 0 | \`$*\` |" >> "$summary"; return
  fi
  echo "[gpu_check] $name (at most ${limit}s): $*"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" > "$work/logs/$name.log" 2>&1
  rc=$?
  local status=ok
  (( rc == 124 || rc == 137 )) && status="timed out after ${limit}s"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc): $(tail -n 1 "$work/logs/$name.log" | tr '|' '/' | cut -c1-150)"
  echo "| $name | $status | $(( $(date +%s) - t0 )) | \`$*\` |" >> "$summary"
  echo "[gpu_check] $name: $status"
}
note() { echo "| $1 | $2 | 0 | |" >> "$summary"; echo "[gpu_check] $1: $2"; }

# 1. Carried wheels into a fresh venv that also sees the image's packages (its CUDA torch) through a
#    .pth line: the image's python3 is itself a venv, so --system-site-packages would not show them; a
#    real venv is needed because the ROS wheels put libraries and the ament index under its prefix.
if [ $dry = 1 ]; then
  note install 'dry run: carried wheels not installed (the CPU venv has them)'
elif [ -f .whl/gpu_wheels.tar.xz ]; then
  venv=$work/venv
  mkdir -p "$work/wheels"
  step install 90 bash -c "set -e  # Python unpacks the archive: the image may lack the xz tool
    '$py' -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      .whl/gpu_wheels.tar.xz '$work/wheels'
    '$py' -m venv --without-pip '$venv'
    '$py' -c 'import site; print(*site.getsitepackages(), sep=chr(10))' \
      > \$(echo '$venv'/lib/python3*/site-packages)/image_packages.pth
    '$venv/bin/python' -m pip install -q --no-index --no-deps --no-compile '$work'/wheels/*.whl"
  grep -q '| install | ok |' "$summary" && py=$venv/bin/python
else
  note install 'no .whl/gpu_wheels.tar.xz (run scripts/fetch_wheels.sh and carry .whl): peers and ROS 2 may be missing'
fi
"$py" - > "$work/logs/environment.log" 2>&1 <<'PY'
import platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')
PY
note environment "$(tr '\n' ' ' < "$work/logs/environment.log" | cut -c1-200)"

bench=("$py" -m mffseg_ros.cli bench)
if [ $dry = 1 ]; then
  dev=(--device cpu --threads 1) sizes=64x64 iters=(--iters 2 --warmup 1) prec=fp32 half=fp32
  graphs=torch,onnx peer_backends=torch frame=96x120 rates=10,20 duration=1
  tests=(test/test_cuda.py)
else
  dev=(--device cuda) sizes=1024x1280,512x640 iters=(--iters 200 --warmup 20) prec=fp32,fp16,bf16 half=fp16
  graphs=torch,cudagraph peer_backends=torch,cudagraph frame=1024x1280 rates=30,60 duration=15
  tests=(test/test_cuda.py test/test_fast_path.py test/test_backends.py)
fi

# 2. CUDA tests: AMP training step, CUDA graph replay, fast path vs eager pipeline.
step tests 150 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
# 3. Model only: eager and CUDA graphs, every size x precision x branch (seconds per row).
step bench_model 100 "${bench[@]}" "${dev[@]}" --sizes "$sizes" --modes main,aux --precisions "$prec" \
  --backends "$graphs" "${iters[@]}" --out "$work/bench_model"
# 4. torch.compile (tens of seconds to compile per row): fp16, main, 1024x1280 only; not in the dry run
#    (compiling for the CPU takes minutes there).
if [ $dry = 1 ]; then
  note bench_compile 'dry run: skipped'
else
  step bench_compile 90 "${bench[@]}" "${dev[@]}" --sizes 1024x1280 --modes main --precisions fp16 \
    --backends torch,compile "${iters[@]}" --out "$work/bench_compile"
fi
# 5. The paper's peers next to MFF, same run (smp from the carried wheels, else reported unavailable).
step bench_peers 70 "${bench[@]}" "${dev[@]}" --sizes "$sizes" --modes main --precisions "$half" \
  --backends "$peer_backends" --peers "${iters[@]}" --out "$work/bench_peers"
# 6. ROS 2 end to end: stereo pairs into the segment node (its own process, fp16 on CUDA).
if "$py" -c 'import rclpy' > "$work/logs/rclpy_import.log" 2>&1; then
  ros_params=()
  [ $dry = 0 ] && ros_params=(--node-param precision:=fp16)
  step bench_ros 140 "${bench[@]}" "${dev[@]}" --no-model --ros --stereo --frame-size "$frame" --rate "$rates" \
    --duration "$duration" "${ros_params[@]}" --out "$work/bench_ros"
else
  note bench_ros "skipped: rclpy is not importable ($(tail -n 1 "$work/logs/rclpy_import.log" | cut -c1-120))"
fi

# Results: the summary with the tables, the tables alone, and everything in one archive.
for name in bench_model bench_compile bench_peers bench_ros; do
  if [ -f "$work/$name/bench.md" ]; then
    cp "$work/$name/bench.md" "$out/$name.md"
    printf '\n---\n\n## %s\n\n' "$name" >> "$summary"
    sed 's/^# /### /' "$work/$name/bench.md" >> "$summary"
  fi
done
echo "total $(( $(date +%s) - start )) s" >> "$summary"
cp "$summary" "$out/summary.md"
tar -C "$work" -czf "$out/gpu_check.tar.gz" --exclude=venv --exclude=wheels .
rm -rf "$work"
echo "[gpu_check] done in $(( $(date +%s) - start )) s: $out/summary.md"
