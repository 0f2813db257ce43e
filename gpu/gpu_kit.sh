#!/usr/bin/env bash
# Pack what gpu_study.sh needs on a GPU machine that has PyTorch but no network: wheels of imbadv's
# dependencies beyond that machine's image (gpu_image_packages.txt), for its Python, and the
# dataset archive. Run it where pip reaches a package index; pass the folder to the GPU machine
# with the working tree and call `gpu_study.sh --kit <folder>` there.
#
#   gpu/gpu_kit.sh [--data PATH.tar.gz] [--python-version 3.12] [--out .gpu-kit] [--max-mib 60]
#
# The folder should be ignored by git (.git/info/exclude). --max-mib stops the script when the
# folder would be larger, since machines that take a copy of the working tree cap its size.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="$HERE/../../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz" PYVER=3.12 OUT=.gpu-kit MAX_MIB=60
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2 ;; --python-version) PYVER=$2 ;; --out) OUT=$2 ;; --max-mib) MAX_MIB=$2 ;;
    *) echo "gpu_kit.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
PYTHON="${PYTHON:-python}"
[ -f "$DATA" ] || { echo "gpu_kit.sh: no dataset archive at $DATA: pass --data PATH.tar.gz" >&2; exit 2; }
# The versions this checkout is tested with, so that the GPU machine runs the same MLflow.
REQUIREMENTS=$("$PYTHON" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("mlflow", "tenacity", "filelock")))
EOF
)

rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/all" "$OUT.tmp/wheels"
PLATFORMS=()
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --only-binary=:all: --implementation cp --python-version "$PYVER" \
  "${PLATFORMS[@]}" -d "$OUT.tmp/all" $REQUIREMENTS 2> >(grep -v "is ignored: it is neither" >&2)
"$PYTHON" - "$HERE/gpu_image_packages.txt" "$OUT.tmp/all" "$OUT.tmp/wheels" <<'EOF'
import re, shutil, sys
from pathlib import Path

listing, downloaded, kept = sys.argv[1:]
normalize = lambda name: re.sub(r"[-_.]+", "-", name).lower()
image = {normalize(line.strip()) for line in open(listing) if line.strip() and not line.startswith("#")}
for wheel in sorted(Path(downloaded).glob("*.whl")):
    if normalize(wheel.name.split("-")[0]) not in image:
        shutil.copy2(wheel, kept)
EOF
rm -rf "$OUT.tmp/all"
cp "$DATA" "$OUT.tmp/$(basename "$DATA")"
SIZE_MIB=$(( $(du -sb "$OUT.tmp" | cut -f1) / 1048576 ))
if [ "$SIZE_MIB" -gt "$MAX_MIB" ]; then
  echo "gpu_kit.sh: the kit is ${SIZE_MIB} MiB, over --max-mib $MAX_MIB: carry less or raise the cap" >&2
  rm -rf "$OUT.tmp"; exit 1
fi
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT: $(ls "$OUT/wheels" | wc -l) wheels for CPython $PYVER ($REQUIREMENTS and what they need beyond the image)," \
  "$(basename "$DATA"); ${SIZE_MIB} MiB"
