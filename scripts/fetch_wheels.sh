#!/usr/bin/env bash
# Downloads the cp312 manylinux x86-64 wheels listed in scripts/gpu_wheels.txt (peers and ROS 2 client
# libraries; torch and the rest are in the GPU machine's image) and packs them into ONE archive,
# .whl/gpu_wheels.tar.xz, that scripts/gpu_check.sh installs from without internet.
# Why an archive: the 44 MB of wheels are zip-deflated; stored uncompressed and xz'd together they
# take about 10 MB, which leaves room for the repository within a 64 MiB transfer.
# Usage: scripts/fetch_wheels.sh   (needs PyPI; WHEEL_DIR=... to write elsewhere than .whl/)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${WHEEL_DIR:-.whl}
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
platforms=()
for n in 17 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
echo "[fetch_wheels] downloading $(grep -c '^[a-z]' scripts/gpu_wheels.txt) wheels for cp312 x86-64"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 "${platforms[@]}" --platform manylinux2014_x86_64 -d "$tmp/zipped" -r scripts/gpu_wheels.txt \
  2> >(grep -v "is ignored" >&2)  # this machine's pip config names local indexes that may be absent
"$py" - "$tmp/zipped" "$tmp/stored" <<'PY'
import pathlib, sys, zipfile
src, dst = (pathlib.Path(p) for p in sys.argv[1:])
dst.mkdir()
for wheel in sorted(src.glob('*.whl')):  # same files, stored: xz then compresses across all of them
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(dst / wheel.name, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_STORED)
PY
mkdir -p "$dest"
tar -C "$tmp/stored" -cf - . | xz -9 -T1 > "$dest/gpu_wheels.tar.xz.part"
mv "$dest/gpu_wheels.tar.xz.part" "$dest/gpu_wheels.tar.xz"
size=$(du -m "$dest/gpu_wheels.tar.xz" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cm | tail -1 | cut -f1)
echo "[fetch_wheels] wrote $dest/gpu_wheels.tar.xz (${size} MiB; tracked files ${tree} MiB; 64 MiB travel in all)"
