#!/usr/bin/env bash
# P3 inference (SPEC 4): bash hw1_3.sh IMAGE_DIR OUT_DIR
# Writes OUT_DIR/xxxx_mask.png (RGB, course palette, same size as the input) for every xxxx_sat.jpg.
# Model: $DLCV_P3_CKPT if set, else checkpoints/p3.pt beside this script (a dlcv segment checkpoint,
# e.g. runs/<run>/checkpoints/best.pt copied there). Python: $DLCV_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/hw1_common.sh"
hw1_run "bash hw1_3.sh IMAGE_DIR OUT_DIR" 2 DLCV_P3_CKPT p3.pt "segment predict" -- "$@"
