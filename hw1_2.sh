#!/usr/bin/env bash
# P2 inference (SPEC 4): bash hw1_2.sh IN_CSV IMAGE_DIR OUT_CSV
# Writes OUT_CSV `id,filename,label` with id and filename copied from IN_CSV in its order (its label
# column is ignored and may be `None`); labels from the setting-C model.
# Model: $DLCV_P2_CKPT if set, else checkpoints/p2.pt beside this script (the checkpoints/best.pt of a
# `dlcv ssl finetune --setting C` run copied there). Python: $DLCV_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/hw1_common.sh"
hw1_run "bash hw1_2.sh IN_CSV IMAGE_DIR OUT_CSV" 3 DLCV_P2_CKPT p2.pt "ssl predict" -- "$@"
