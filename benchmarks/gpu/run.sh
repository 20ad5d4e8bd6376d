#!/usr/bin/env bash
# On the GPU machine: bash benchmarks/gpu/run.sh p1|p2|p3 OUT_DIR [--pack gpu_pack] [--tiny]
# Unpacks the pack, runs the problem's recipes with dlcv from this tree (PYTHONPATH; the machine's torch
# is not touched) and writes at most 8 flat files into OUT_DIR: figures.json (every figure with its
# command and the nvidia-smi line), progress.log, run summaries, the report's key figures.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
problem="$1" out="$2"
shift 2
mkdir -p "$out"
py="${DLCV_PYTHON:-python3}"
"$py" -u "$repo/benchmarks/gpu/kit.py" run "$problem" "$out" "$@" 2>&1 | tee "$out/progress.log"
