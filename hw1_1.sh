#!/usr/bin/env bash
# P1 inference (SPEC 4): bash hw1_1.sh IMAGE_DIR OUT_CSV
# Writes OUT_CSV with header `filename,label`, one row per image of IMAGE_DIR, sorted by file name.
# Model: $DLCV_P1_CKPT if set, else checkpoints/p1.pt beside this script (a dlcv classify checkpoint,
# e.g. runs/<run>/checkpoints/best.pt copied there). Python: $DLCV_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/hw1_common.sh"
hw1_run "bash hw1_1.sh IMAGE_DIR OUT_CSV" 2 DLCV_P1_CKPT p1.pt "classify predict" -- "$@"
