# Sourced by gpu_study.sh and step_costs.sh once their options are read (OUT, KIT, DATA): the Python
# to run, OUT made absolute, a kit's wheels on the path (gpu_kit.sh makes kits) and its archive as
# the data unless DATA is set, a store, its artifacts and the cache under OUT (the scripts run from
# OUT: MLflow puts a sqlite store's artifacts in ./mlruns), and a millisecond clock.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ -n "$KIT" ]; then
  [ -d "$KIT/wheels" ] || {
    echo "$(basename "$0"): $KIT has no wheels/: make it with gpu/gpu_kit.sh" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$OUT/site" "$KIT"/wheels/*.whl
  export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
  [ -n "$DATA" ] || DATA="$(ls "$KIT"/*.tar.gz | head -1)"
fi
DATA="${DATA:-cifar10}"
[ ! -e "$DATA" ] || DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" IMBADV_CACHE="${IMBADV_CACHE:-$OUT/cache}"
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's imbadv, wherever the script runs from
cd "$OUT"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() {  # the time since $1 (from now_ms) in seconds, three decimals
  local elapsed=$(( $(now_ms) - $1 ))
  printf '%d.%03d' $((elapsed / 1000)) $((elapsed % 1000))
}
