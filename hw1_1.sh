#!/usr/bin/env bash
# P1 inference (SPEC 4): bash hw1_1.sh IMAGE_DIR OUT_CSV
# Writes OUT_CSV with header `filename,label`, one row per image of IMAGE_DIR, sorted by file name.
# Model: $DLCV_P1_CKPT if set, else checkpoints/p1.pt beside this script (a dlcv classify checkpoint,
# e.g. runs/<run>/checkpoints/best.pt copied there). Python: $DLCV_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: bash hw1_1.sh IMAGE_DIR OUT_CSV" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ckpt="${DLCV_P1_CKPT:-$here/checkpoints/p1.pt}"
py="${DLCV_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
exec "$py" -m dlcv classify predict --ckpt "$ckpt" "$1" "$2"
