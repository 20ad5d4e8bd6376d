"""dlcv: deep learning for computer vision (classification, BYOL self-supervision, segmentation).

The Python API (docs/usage.md): `dlcv.load(path)` -> a Model (predict, segment, embed) from a checkpoint or
an exported file, and `dlcv.train(task, recipe, out, **overrides)` -> the run's Summary. Importing dlcv
imports no torch: these names load on first use."""
from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

__version__ = "0.1.0"

_LAZY = {"load": "dlcv.api", "train": "dlcv.api", "Model": "dlcv.api", "DlcvError": "dlcv.errors"}
__all__ = ["load", "train", "Model", "DlcvError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlcv' has no attribute {name!r}")


def source_commit(short: bool = False) -> str | None:
    """The git commit of the checkout this package runs from; None outside one or without git."""
    try:
        result = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                                cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
