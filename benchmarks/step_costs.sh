#!/usr/bin/env bash
# The fixed costs of the study's steps on a device: two `paper-fast` models trained on 64 images per
# class for one epoch without compile, then one evaluation alone and four at once (the study's
# --jobs 4), each timed end to end (process start, data, the test set, ONNX, artifacts, registry).
# A scratch store and cache under --out; the models' accuracy is meaningless, their step times are not.
#
#   benchmarks/step_costs.sh [--device cuda] [--data cifar10|PATH] [--kit DIR] [--out step-costs]
#
# --kit DIR (made by gpu/gpu_kit.sh) installs DIR's wheels beside the machine's packages and takes its
# dataset archive unless --data is given.
set -euo pipefail

DEVICE=cuda DATA="" KIT="" OUT=step-costs
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2 ;; --data) DATA=$2 ;; --kit) KIT=$2 ;; --out) OUT=$2 ;;
    *) echo "step_costs.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
# shellcheck source=gpu/device_env.sh
source "$(dirname "$0")/../gpu/device_env.sh"
mkdir -p "$OUT/logs"
step() {  # step NAME ARGS...: run `imbadv ARGS`, print its seconds, stop on failure
  local name=$1 start; shift
  start=$(now_ms)
  "$PYTHON" -m imbadv "$@" >"$OUT/logs/$name.log" 2>&1 || { tail -n 5 "$OUT/logs/$name.log" >&2; exit 3; }
  printf '%-45s %8s s\n' "$name" "$(seconds_since "$start")"
}
TRAIN=(--preset paper-fast --no-torch-compile --majority-count 64 --epochs 1
       --data "$DATA" --device "$DEVICE")
EVALUATE=(--preset paper-fast --data "$DATA" --device "$DEVICE" --max-onnx-disagreement 1)
step "train balanced (decodes the data first)" train "${TRAIN[@]}"
step "train under-c3" train "${TRAIN[@]}" --sampling under --class-id 3
step "evaluate under-c3 source=balanced, alone" evaluate "${EVALUATE[@]}" --sampling under --class-id 3 --source balanced
THREADS=$(( $(nproc) >= 8 ? $(nproc) / 4 : 1 ))  # as the study splits the cores between 4 jobs
START=$(now_ms) PIDS=()
for i in 1 2 3 4; do
  OMP_NUM_THREADS=$THREADS step "evaluate under-c3 source=self, 4 at once ($i)" evaluate "${EVALUATE[@]}" \
    --sampling under --class-id 3 --source self &
  PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid" || exit 3; done
printf '%-45s %8s s\n' "4 evaluations at once, wall" "$(seconds_since "$START")"
