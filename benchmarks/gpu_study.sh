#!/usr/bin/env bash
# The whole study on one GPU: train the 21 models, run the 41 attack evaluations, build the report,
# against a fresh local SQLite store; then write a JSON of wall time per phase, training images/s,
# the GPU's name and the torch version (gpu/study_timing.py), and runs.csv: each run's
# duration and summary metrics (benchmarks/study_runs.py).
#
#   benchmarks/gpu_study.sh [--device cuda] [--preset paper-fast] [--data cifar10|PATH] [--classes all]
#                           [--seeds 1] [--jobs 4] [--budget 540] [--out gpu-study] [--kit DIR] [--preflight 1]
#                           [--engine shared] [--group-trainings 0] [--train-options KEY=VALUE,...]
#
# --kit DIR (made by gpu/gpu_kit.sh) installs DIR's wheels beside the machine's own packages, without
# a network, and takes DIR's dataset archive unless --data is given.
# --preflight 1 (the default) first trains one model of the preset on 64 images per class, one epoch,
# on the device, in a scratch store: a broken environment (a missing package, a failing compile or
# ONNX export) fails there in a minute instead of after the budget. It also fills the decoded-image
# cache and torch.compile's cache that the study then reuses; its seconds are reported apart
# (preflight_s). --preflight 0 skips it. When the study may train groups (--group-trainings other than
# 1; 0 on a GPU), the preflight also runs benchmarks/bench_group.py for two models (bench_group.txt,
# bench_group.json). If that check fails, or the group trains fewer images/s than $GROUP_CHECK_MIN_RATIO
# (default 1) times one model at a time, the study trains one model at a time (--group-trainings 1)
# and says why: the device call still yields a study. The JSON records the choice (group_trainings,
# group_check).
# --budget caps the study's seconds (default 540: 9 minutes). If it runs out, the study is stopped,
# and the JSON extrapolates each phase from its finished steps and says so. --seeds N runs seeds 0 to
# N-1 (21 trainings and 41 evaluations each), timed together. --jobs independent
# steps share the device, each in its own process; --engine (shared, the default, or isolated) and
# --group-trainings (0: auto, 10 on CUDA for a preset without torch.compile such as paper-group) are
# imbadv reproduce's, as is --train-options (e.g. stopping=val-loss: the trainings stop early on the
# held-out loss instead of training to convergence). While the study runs, nvidia-smi (or $NVIDIA_SMI) samples the GPU's
# utilisation and memory once a second into gpu_util.csv, summarised in the JSON. Dry run on a CPU:
#   benchmarks/gpu_study.sh --device cpu --preset smoke --data ../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz
set -euo pipefail

DEVICE=cuda PRESET=paper-fast DATA="" CLASSES=all SEEDS=1 JOBS=4 BUDGET=540 OUT=gpu-study KIT="" PREFLIGHT=1 ENGINE=shared GROUP=0
TRAIN_OPTIONS="" GROUP_FALLBACK="" GROUP_CHECK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2 ;; --preset) PRESET=$2 ;; --data) DATA=$2 ;; --classes) CLASSES=$2 ;; --seeds) SEEDS=$2 ;;
    --jobs) JOBS=$2 ;; --budget) BUDGET=$2 ;; --out) OUT=$2 ;; --kit) KIT=$2 ;; --preflight) PREFLIGHT=$2 ;;
    --engine) ENGINE=$2 ;; --group-trainings) GROUP=$2 ;; --train-options) TRAIN_OPTIONS=$2 ;;
    *) echo "gpu_study.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift 2
done
# shellcheck source=gpu/device_env.sh
source "$(dirname "$0")/../gpu/device_env.sh"
# The store's tables are made before the clock starts: a study stopped while MLflow creates them
# would leave a store that no later command can open.
"$PYTHON" -c "from mlflow.tracking import MlflowClient; MlflowClient().search_experiments(max_results=1)"

PREFLIGHT_ARGS=()
if [ "$PREFLIGHT" = 1 ]; then
  echo "preflight: one $PRESET training on 64 images per class, one epoch, on $DEVICE"
  START_MS=$(now_ms)
  if ! MLFLOW_TRACKING_URI="sqlite:///$OUT/preflight.db" "$PYTHON" -m imbadv train --preset "$PRESET" \
      --data "$DATA" --device "$DEVICE" --majority-count 64 --epochs 1 >"$OUT/preflight.log" 2>&1; then
    echo "gpu_study.sh: the preflight training failed, so the study was not started: see $OUT/preflight.log" >&2
    tail -n 5 "$OUT/preflight.log" >&2
    exit 3
  fi
  if [ "$GROUP" != 1 ] && { [ "$GROUP" != 0 ] || [ "$DEVICE" != cpu ]; }; then
    # the study may train groups: vmap on this device, and a group's speed against one model at a time
    MIN_RATIO="${GROUP_CHECK_MIN_RATIO:-1}"
    rm -f "$OUT/bench_group.json"  # an earlier call's check is not this one's
    if "$PYTHON" "$HERE/../benchmarks/bench_group.py" --device "$DEVICE" --models 2 --images 256 --repeats 1 \
        --width "${GROUP_CHECK_WIDTH:-64}" --batch 32 --precision bf16 --json "$OUT/bench_group.json" \
        >"$OUT/bench_group.txt" 2>&1; then
      tail -n 2 "$OUT/bench_group.txt"
      RATIO=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["group_vs_loop"])' \
        "$OUT/bench_group.json")
      if awk -v ratio="$RATIO" -v least="$MIN_RATIO" 'BEGIN { exit !(ratio < least) }'; then
        GROUP_FALLBACK="a training group trained ${RATIO}x the images/s of one model at a time, under $MIN_RATIO"
      fi
    else
      tail -n 5 "$OUT/bench_group.txt" >&2
      GROUP_FALLBACK="the training-group check failed (see $OUT/bench_group.txt)"
    fi
    [ ! -f "$OUT/bench_group.json" ] || GROUP_CHECK+=(--group-check "$OUT/bench_group.json")
    if [ -n "$GROUP_FALLBACK" ]; then
      echo "gpu_study.sh: $GROUP_FALLBACK: the study trains one model at a time (--group-trainings 1)" >&2
      GROUP=1 GROUP_CHECK+=(--group-fallback "$GROUP_FALLBACK")
    fi
  fi
  PREFLIGHT_ARGS=(--preflight-seconds "$(seconds_since "$START_MS")")
  echo "preflight: passed in ${PREFLIGHT_ARGS[1]}s"
fi
echo "study: preset $PRESET, device $DEVICE, data $DATA, classes $CLASSES, $SEEDS seed(s), $JOBS jobs, $ENGINE engine," \
  "--group-trainings $GROUP, budget ${BUDGET}s -> $OUT"

NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"
SAMPLER="" SAMPLES=()
if command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
  "$NVIDIA_SMI" --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 \
    >"$OUT/gpu_util.csv" 2>/dev/null &
  SAMPLER=$!
  SAMPLES=(--gpu-samples "$OUT/gpu_util.csv")
fi
EXCEEDED=()
STATUS=0
timeout --signal=INT --kill-after=30 "$BUDGET" "$PYTHON" -m imbadv reproduce --preset "$PRESET" --data "$DATA" \
  --device "$DEVICE" --classes "$CLASSES" --seeds "$SEEDS" --jobs "$JOBS" --engine "$ENGINE" \
  --group-trainings "$GROUP" ${TRAIN_OPTIONS:+--train-options "$TRAIN_OPTIONS"} || STATUS=$?
[ -z "$SAMPLER" ] || { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }
if [ "$STATUS" = 124 ] || [ "$STATUS" = 137 ]; then
  echo "the study ran past its ${BUDGET}s budget: timings below are extrapolated from the finished steps"
  EXCEEDED=(--budget-exceeded)
elif [ "$STATUS" != 0 ]; then
  echo "the study failed (exit $STATUS); see the step logs under $IMBADV_CACHE/logs" >&2
  exit "$STATUS"
fi

REPORT=()
if [ "$STATUS" = 0 ]; then
  START_MS=$(now_ms)
  "$PYTHON" -m imbadv report --preset "$PRESET" --data "$DATA" --output-dir "$OUT/reports"
  REPORT=(--report-seconds "$(seconds_since "$START_MS")")
fi
"$PYTHON" "$HERE/study_timing.py" --preset "$PRESET" --data "$DATA" --seeds "$SEEDS" --output "$OUT/gpu_study.json" \
  --engine "$ENGINE" --group-trainings "$GROUP" "${REPORT[@]}" "${EXCEEDED[@]}" "${PREFLIGHT_ARGS[@]}" \
  "${SAMPLES[@]}" "${GROUP_CHECK[@]}"
"$PYTHON" "$(dirname "$0")/study_runs.py" --output "$OUT/runs.csv"
