#!/usr/bin/env bash
# The long `cpu` studies beyond the paper, resumable across sessions and code edits: the code is frozen
# once per study (git archive of --commit into DIR/NAME/src), the store, its artifacts and the cache lie
# in DIR/NAME, and running the same line again reuses every finished run and resumes killed trainings
# from their checkpoints. Each study ends by writing its report to DIR/NAME/report*, to be copied under
# benchmarks/results/.
#
#   nohup benchmarks/long_study.sh curve|remedies|gtsrb [--dir ~/imbadv-long] [--commit HEAD] \
#       [--data PATH] [--preset cpu] > study.log 2>&1 &
#
# --preset smoke tries the whole chain in minutes; give it a --dir of its own.
#
# curve     issue 29: cat and automobile under and over at ratios 1-100, CIFAR-10-LT 10 and 100;
#           FGSM and PGD-20, white-box and from the balanced model; 3 seeds (about 80 trainings).
# remedies  issue 30: under ratio 5 (cat, automobile) and CIFAR-10-LT 100 under ce, cb, la, bs,
#           ce with over-sampling and post-hoc adjustment (tau 1); FGSM, PGD-20 and AutoAttack
#           (fast) on the first 200 test images of each class; 3 seeds; and the same attacks on curve's
#           over-sampled ratio-5 models (the paper's remedy). Shares curve's store: its ce models,
#           over-sampled ones included, are the curve's.
# gtsrb     issue 31: GTSRB's natural profile under ce, cb, la, bs and post-hoc adjustment; FGSM and
#           PGD-20, white-box and from the peer of the next seed; 3 seeds.
#
# The venv is this checkout's (.venv, `make setup-test`); only the imbadv package comes from src.
set -euo pipefail

STUDY=${1:?"usage: benchmarks/long_study.sh curve|remedies|gtsrb [--dir DIR] [--commit REV] [--data PATH] [--preset cpu]"}
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$HOME/imbadv-long" COMMIT=HEAD DATA="" PRESET=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2 ;; --commit) COMMIT=$2 ;; --data) DATA=$2 ;; --preset) PRESET=$2 ;;
    *) echo "long_study.sh: unknown option $1: use --dir, --commit, --data or --preset" >&2; exit 2 ;;
  esac
  shift 2
done

case "$STUDY" in
  curve|remedies) NAME=cifar10 DATA=${DATA:-$ROOT/../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz} ;;
  gtsrb) NAME=gtsrb DATA=${DATA:-$ROOT/../shared/datasets/gtsrb32/gtsrb32.tar.gz} ;;
  *) echo "long_study.sh: unknown study $STUDY: use curve, remedies or gtsrb" >&2; exit 2 ;;
esac
[ -e "$DATA" ] || { echo "long_study.sh: no data at $DATA: pass --data PATH" >&2; exit 2; }
IMBADV="$ROOT/.venv/bin/imbadv"
[ -x "$IMBADV" ] || { echo "long_study.sh: no $IMBADV: run make setup-test first" >&2; exit 2; }

WORK="$DIR/$NAME"
mkdir -p "$WORK"
if [ ! -d "$WORK/src" ]; then  # frozen once: a later edit of the checkout never changes a running study
  git -C "$ROOT" rev-parse --verify "$COMMIT^{commit}" > "$WORK/COMMIT"
  mkdir "$WORK/src.partial"
  git -C "$ROOT" archive "$(cat "$WORK/COMMIT")" imbadv | tar -x -C "$WORK/src.partial"
  mv "$WORK/src.partial" "$WORK/src"
fi
export PYTHONPATH="$WORK/src" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" IMBADV_CACHE="$WORK/cache"
DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"
cd "$WORK"  # MLflow puts a sqlite store's artifacts in ./mlruns: beside the store, never in the checkout
echo "long_study.sh: $STUDY on code $(cat "$WORK/COMMIT"), store $MLFLOW_TRACKING_URI, $(date -Is)"

CPU=(--preset "$PRESET" --seeds 3 --jobs 2 --data "$DATA")
case "$STUDY" in
  curve)
    "$IMBADV" sweep --classes cat,automobile --ratios 1,2,5,10,20,50,100 --longtail 10,100 --attacks fgsm,pgd "${CPU[@]}"
    "$IMBADV" report --sweep --preset "$PRESET" --data "$DATA" --output-dir "$WORK/report-curve" ;;
  remedies)
    STRONG=(--attacks fgsm,pgd,autoattack --aa-version fast --images-per-class 200)
    "$IMBADV" sweep --classes cat,automobile --ratios 1,5 --samplings under --longtail 100 \
      --losses ce,cb,la,bs --posthoc 1 \
      "${STRONG[@]}" "${CPU[@]}"
    "$IMBADV" sweep --classes cat,automobile --ratios 1,5 --samplings over --longtail "" "${STRONG[@]}" "${CPU[@]}"
    "$IMBADV" sweep --classes cat,automobile --ratios 1,5 --samplings under --longtail 100 \
      --losses ce --resample oversample \
      "${STRONG[@]}" "${CPU[@]}"
    "$IMBADV" report --sweep --preset "$PRESET" --data "$DATA" --images-per-class 200 --output-dir "$WORK/report-remedies" ;;
  gtsrb)
    "$IMBADV" natural --losses ce,cb,la,bs --posthoc 1 --attacks fgsm,pgd "${CPU[@]}"
    "$IMBADV" report --natural --preset "$PRESET" --data "$DATA" --output-dir "$WORK/report-gtsrb" ;;
esac
echo "long_study.sh: $STUDY done, $(date -Is)"
