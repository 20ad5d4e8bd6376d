"""What the CPU benchmark scripts share: the machine a figure came from, and the report printed as JSON
(and written atomically to --out)."""
from __future__ import annotations

import json
import sys

import torch


def machine() -> dict:
    from dlcv.engine.run import cpu_has_native_bf16, cpu_name
    return {"cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": " ".join(["python", *sys.argv])}


def emit(report: dict, out: str | None) -> int:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        from dlcv.fileio import write_text
        write_text(out, text + "\n")
    return 0
