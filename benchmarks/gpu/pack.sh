#!/usr/bin/env bash
# Here, before a GPU call: bash benchmarks/gpu/pack.sh p1|p2|p3 DEST [--data HW1_DATA] [--tiny]
# Packs one problem's data and offline weights into DEST (an ignored folder inside the repository, e.g.
# gpu_pack) and checks that the call (working tree + DEST) stays under 64 MiB. See benchmarks/gpu/kit.py.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${DLCV_PYTHON:-$repo/.venv/bin/python}"
[ -x "$py" ] || py=python3
exec "$py" "$repo/benchmarks/gpu/kit.py" pack "$@"
