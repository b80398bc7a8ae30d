# Sourced by the scripts in scripts/gpu/ (run through the device tool from the repository root):
#   source "$(dirname "$0")/common.sh" NAME
# gives RES (a fresh results folder), OUT (where the tarball goes; the device tool collects $OUT), run (echoes a
# command, then runs it unless DRY=1: how the scripts are checked on a CPU), the project installed and the
# card's name in $RES/gpu.csv; `pack` at the end tars $RES, without checkpoints, into $OUT/NAME.tar.gz.
set -uo pipefail
GPU_RUN_NAME=$1
OUT=${OUT:-/tmp/${GPU_RUN_NAME}_out}
RES=$(mktemp -d)
run() { echo "+ $*"; if [ "${DRY:-0}" != 1 ]; then "$@"; fi; }
pack() {
  find "$RES" -name "*.ckpt" -delete
  mkdir -p "$OUT" && tar czf "$OUT/$GPU_RUN_NAME.tar.gz" -C "$RES" . && echo "results: $OUT/$GPU_RUN_NAME.tar.gz"
}
if [ -d wheels ] && [ -n "${WHEELS:-}" ]; then run pip install --no-index --find-links wheels $WHEELS; fi
run pip install -e . --no-deps -q
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv > "$RES/gpu.csv" 2>&1 || true
