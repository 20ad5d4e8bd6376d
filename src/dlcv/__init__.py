"""dlcv: deep learning for computer vision (classification, BYOL self-supervision, segmentation)."""
from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def source_commit(short: bool = False) -> str | None:
    """The git commit of the checkout this package runs from; None outside one or without git."""
    try:
        result = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                                cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
