"""Checkpoints and snapshots: written atomically, read with `torch.load(weights_only=True)` only, and
checked by kind and task on load.

Nothing is ever unpickled beyond tensors and plain Python types, so a crafted `.pt` file handed to
`hw1_1.sh` cannot run code: that is why the RNG states are stored as tensors and plain numbers.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dlcv.config import MAX_SIDE
from dlcv.errors import DlcvError
from dlcv.fileio import torch_save

# 2: RNG states as tensors (weights_only), a `kind` per file, the epoch rows inside `last.pt`.
FORMAT_VERSION = 2
CHECKPOINT, SNAPSHOT = "checkpoint", "snapshot"
# keys every checkpoint holds; a task names the extra ones it needs (classify: classes, preprocess)
CHECKPOINT_KEYS = ("task", "model", "config", "epoch", "step")


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays (e.g. a metric computed with numpy) -> Python numbers / tensors, so the file
    loads under weights_only."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


def _save(path: str | Path, kind: str, state: dict[str, Any]) -> None:
    torch_save({"format_version": FORMAT_VERSION, "kind": kind, **_plain(state)}, path)


def save(path: str | Path, state: dict[str, Any]) -> None:
    _save(path, CHECKPOINT, state)


def save_snapshot(path: str | Path, state: dict[str, Any]) -> None:
    """Per-epoch data kept for figures (features, masks); not a model, refused where a checkpoint is due."""
    _save(path, SNAPSHOT, state)


def _read(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise DlcvError(f"{kind} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc):  # torch's refusal to unpickle anything else
            raise DlcvError(f"{path}: refused, it holds Python objects other than tensors and plain values "
                            "(loading it could run code; a last.pt of dlcv before format 2 holds such RNG "
                            "states: its best.pt and epoch_NNN.pt still load)") from None
        raise DlcvError(f"cannot read {kind} {path}: {first}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise DlcvError(f"{path} is not a dlcv {kind} (for plain weights use model.weights=FILE)")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DlcvError(f"{path} has format_version {version!r}, newer than this dlcv reads "
                        f"(up to {FORMAT_VERSION}); update dlcv")
    found = state.get("kind", CHECKPOINT)
    if found != kind:
        raise DlcvError(f"{path} is a dlcv {found} file, not a {kind}")
    return state


def load(path: str | Path, task: str | None = None, require: Sequence[str] = ()) -> dict[str, Any]:
    """A dlcv checkpoint of `task` holding the common keys and `require`d ones; anything else (a plain
    state_dict, a snapshot, a hand-made dict, another task's file, a newer format) is a clear error."""
    path = Path(path)
    state = _read(path, CHECKPOINT)
    if task is not None and "task" in state and state["task"] != task:  # named before any key it lacks
        verb = TASK_COMMANDS.get(state["task"], "")
        raise DlcvError(f"{path} is a checkpoint of task '{state['task']}', not '{task}'"
                        + (f" (a model for `dlcv {verb}`)" if verb else ""))
    missing = [k for k in (*CHECKPOINT_KEYS, *require) if k not in state]
    if missing:
        raise DlcvError(f"{path} is not a complete dlcv checkpoint: missing {', '.join(missing)}")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise DlcvError(f"{path}: its 'model' entry is not a state_dict of tensors")
    # dlcv never saves weights that are not finite (the loop stops first), and a model with them predicts
    # one class for everything
    broken = next((k for k, v in state["model"].items()
                   if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise DlcvError(f"{path}: its weights hold inf or nan ({broken} first; a damaged or hand-edited checkpoint)")
    problem = _metadata_problem(state)
    if problem:
        raise DlcvError(f"{path}: {problem} (a damaged or hand-edited checkpoint)")
    return state


TASK_COMMANDS = {"classify": "classify predict", "segment": "segment predict", "ssl": "ssl export"}


def _metadata_problem(state: dict[str, Any]) -> str | None:
    """What the predict commands read besides the weights, checked: the model's name and options, the class
    names, and the preprocessing's sizes, statistics and test-time augmentation."""
    cfg = state["config"]
    if not (isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("model", "data", "train"))
            and isinstance(cfg["model"].get("name"), str) and isinstance(cfg["model"].get("options", {}), dict)):
        return "its config lacks the model's name and options, or the data / train sections"
    if "classes" in state:
        classes = state["classes"]
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
                and len(set(classes)) == len(classes)):
            return f"its class list {str(classes)[:60]} is not a list of distinct class names"
    if "preprocess" in state:
        pre = state["preprocess"]
        if not isinstance(pre, dict):
            return "its preprocess entry is not a mapping"
        for key, (ok, expected) in PREPROCESS_CHECKS.items():
            if (key in pre or key in ("mean", "std")) and not ok(pre.get(key)):
                return f"preprocess {key} {pre.get(key)!r} is not {expected}"
    return None


def _size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE


def _numbers(v, n: int, ok) -> bool:
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and ok(x) for x in v)


def _tta(v) -> bool:
    if v is None:
        return True
    return isinstance(v, dict) and all(isinstance(v.get(k, False), bool) for k in ("flip", "rotate90")) \
        and isinstance(v.get("translate", 0), int) and 0 <= v.get("translate", 0) < MAX_SIDE \
        and _numbers(v.get("scales", [1.0]), len(v.get("scales", [1.0])) or -1, lambda x: 0 < x <= 4)


PREPROCESS_CHECKS = {
    "image_size": (_size, f"a size in 1..{MAX_SIDE} px"),
    "input_size": (lambda v: v is None or _size(v), f"null or a size in 1..{MAX_SIDE} px"),
    "mean": (lambda v: _numbers(v, 3, lambda x: True), "3 numbers"),
    "std": (lambda v: _numbers(v, 3, lambda x: x > 0), "3 numbers > 0"),
    "infer_scale": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 4,
                    "a factor in (0, 4]"),
    "tta": (_tta, "null or a test-time augmentation mapping (flip, rotate90, translate, scales)"),
}


def load_snapshot(path: str | Path, task: str) -> dict[str, Any]:
    path = Path(path)
    state = _read(path, SNAPSHOT)
    if state.get("task") != task:
        raise DlcvError(f"{path} is a snapshot of task '{state.get('task')}', not '{task}'")
    return state


def rng_states() -> dict[str, Any]:
    """Every generator's state as tensors and ints (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {"torch": torch.get_rng_state(),
              "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
              "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                         "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
