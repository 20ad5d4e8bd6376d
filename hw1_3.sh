#!/usr/bin/env bash
# P3 inference (SPEC 4): bash hw1_3.sh IMAGE_DIR OUT_DIR
# Writes OUT_DIR/xxxx_mask.png (RGB, course palette, same size as the input) for every xxxx_sat.jpg.
# Model: $DLCV_P3_CKPT if set, else checkpoints/p3.pt beside this script (a dlcv segment checkpoint,
# e.g. runs/<run>/checkpoints/best.pt copied there). Python: $DLCV_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: bash hw1_3.sh IMAGE_DIR OUT_DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ckpt="${DLCV_P3_CKPT:-$here/checkpoints/p3.pt}"
py="${DLCV_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
exec "$py" -m dlcv segment predict --ckpt "$ckpt" "$1" "$2"
