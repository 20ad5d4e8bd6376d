"""Checkpoints: written atomically, checked on load for the task that wrote them."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path

FORMAT_VERSION = 1


def save(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load(path: str | Path, task: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DlcvError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DlcvError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise DlcvError(f"{path} is not a dlcv checkpoint (for plain weights use model.weights=FILE)")
    if task is not None and state.get("task") != task:
        raise DlcvError(f"{path} is a checkpoint of task '{state.get('task')}', not '{task}'")
    return state


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
