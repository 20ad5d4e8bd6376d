"""Checkpoints and snapshots: written atomically, read with `torch.load(weights_only=True)` only, and
checked by kind and task on load.

Nothing is ever unpickled beyond tensors and plain Python types, so a crafted `.pt` file handed to
`hw1_1.sh` cannot run code: that is why the RNG states are stored as tensors and plain numbers.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dlcv import task_registry
from dlcv.errors import DlcvError
from dlcv.fileio import torch_save

# 2: RNG states as tensors (weights_only), a `kind` per file, the epoch rows inside `last.pt`.
FORMAT_VERSION = 2
CHECKPOINT, SNAPSHOT = "checkpoint", "snapshot"
# keys every checkpoint holds; a task's inference module names the extra ones it reads (classify: classes,
# preprocess) and checks them
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


def load(path: str | Path, task: str | None = None, require: Sequence[str] = (),
         check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """A dlcv checkpoint of `task` holding the common keys and `require`d ones; anything else (a plain
    state_dict, a snapshot, a hand-made dict, another task's file, a newer format) is a clear error.
    `check`: the reading task's own look at what it reads besides the weights (inference/), returning
    what is wrong or None."""
    path = Path(path)
    return validated(_read(path, CHECKPOINT), path, task, require, check)


def validated(state: dict[str, Any], path: Path, task: str | None = None, require: Sequence[str] = (),
              check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """`state`, read from `path`, checked as `load` checks it (a checkpoint read once, checked by its task's
    module once its task is known)."""
    if task is not None and "task" in state and state["task"] != task:  # named before any key it lacks
        runs_it = next((e.predict for e in task_registry.TASKS if e.name == state["task"] and e.predict), None)
        raise DlcvError(f"{path} is a checkpoint of task '{state['task']}', not '{task}'"
                        + (f" (a model for `dlcv {runs_it}`)" if runs_it else ""))
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
    problem = _config_problem(state["config"]) or (check(state) if check else None)
    if problem:
        raise DlcvError(f"{path}: {problem} (a damaged or hand-edited checkpoint)")
    return state


def _config_problem(cfg: Any) -> str | None:
    """What every reader of a checkpoint's config needs: the model's name and options, the data / train
    sections."""
    if not (isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("model", "data", "train"))
            and isinstance(cfg["model"].get("name"), str) and isinstance(cfg["model"].get("options", {}), dict)):
        return "its config lacks the model's name and options, or the data / train sections"
    return None


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
