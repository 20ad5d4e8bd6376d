"""Everything between a loaded model and its outputs, one path for validation in training, the mask and
feature snapshots and every predict command (hw1_1.sh, hw1_2.sh, hw1_3.sh, embed): the run's
preprocessing, its test-time views, its precision and memory layout, its evaluation batch size, feature
capture. So the graded commands predict, on the same machine, the labels the run's last validation
counted."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dlcv import task_registry
from dlcv.config import MAX_SIDE
from dlcv.engine import checkpoint
from dlcv.errors import DlcvError
from dlcv.engine.precision import Numerics, for_predict, resolve_channels_last, resolve_precision

log = logging.getLogger("dlcv")


def read_any_checkpoint(path) -> tuple[dict[str, Any], Any]:
    """A checkpoint of any task that runs outside training (the registry names its inference module), checked
    by that module (read once): (the checkpoint, the module)."""
    state = checkpoint.load(path)
    entry = next((e for e in task_registry.TASKS if e.name == state["task"]), None)
    if entry is None or entry.inference is None:
        raise DlcvError(f"{path}: a checkpoint of task '{state['task']}', which dlcv does not run outside training")
    module = entry.load_inference()
    return checkpoint.validated(state, Path(path), module.TASK, module.REQUIRE, module.checkpoint_problem), module


def checkpoint_numerics(state: dict[str, Any], device: torch.device, requested: str, where: str) -> Numerics:
    """The numerics predict runs a checkpoint in (engine.precision.for_predict): from what its run
    recorded, or, in a checkpoint of a dlcv before the record, what its config resolves to on this device
    (what its run validated in, if it trained here)."""
    if "inference" in state:
        validated = Numerics.from_record(state["inference"], where)
    else:
        from dlcv.models import model_spec
        train, spec = state["config"]["train"], model_spec(state["config"]["model"]["name"])
        validated = Numerics(resolve_precision(train["precision"], device, spec.cpu_bf16),
                             resolve_channels_last(train["channels_last"], device, spec.cpu_channels_last))
        log.info("%s records no inference settings (an older dlcv): %s, channels_last %s from its config on %s",
                 where, validated.precision, validated.channels_last, device)
    return for_predict(validated, requested, device)


def checkpoint_batch_size(state: dict[str, Any], requested: int | None) -> int:
    """`requested`, else the run's train.eval_batch_size: the batches its validation ran (some kernels
    round differently by batch size)."""
    return requested or state["config"]["train"]["eval_batch_size"]


# -- what a model file holds besides the weights, checked where it is read: each task's inference module
# checks its checkpoints' entries (and an exported file's metadata) with these

def is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE


def are_numbers(v, n: int | None, ok=lambda x: True) -> bool:
    """A list of `n` (None: one or more) finite numbers that pass `ok`."""
    return isinstance(v, list) and (len(v) == n if n is not None else len(v) >= 1) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and ok(x) for x in v)


def is_class_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v)


SIZE = (is_size, f"a size in 1..{MAX_SIDE} px")
MEAN = (lambda v: are_numbers(v, 3), "3 numbers")
STD = (lambda v: are_numbers(v, 3, lambda x: x > 0), "3 numbers > 0")


def entries_problem(entries: dict[str, Any], checks: dict[str, tuple], where: str,
                    required=("mean", "std")) -> str | None:
    """The first entry of `entries` (a checkpoint's "preprocess", an export's metadata) that fails its
    check (key: (ok, what is expected)); absent keys pass unless `required`."""
    if not isinstance(entries, dict):
        return f"its {where} entry is not a mapping"
    for key, (ok, expected) in checks.items():
        if (key in entries or key in required) and not ok(entries.get(key)):
            return f"{where} {key} {entries.get(key)!r} is not {expected}"
    return None


def class_list_problem(classes) -> str | None:
    if not is_class_list(classes):
        return f"its class list {str(classes)[:60]} is not a list of distinct class names"
    return None


@dataclass
class Exportable:
    """What `dlcv export` writes for a checkpoint, built by its task's inference module (`exportable`):
    `graph` takes float RGB in [0, 1], N x 3 x H x W (H = W = `side`; None: any size) and returns
    `outputs`; `metadata` holds the task's entries of the file's metadata (inference.exported);
    `reference` is what predict computes from uint8 images in fp32 (the first output), verified against;
    `labels`: whether that output's argmax over dimension 1 are the predictions (classes, pixels)."""
    graph: nn.Module
    outputs: tuple[str, ...]
    metadata: dict[str, Any]
    side: int | None
    reference: Callable[[torch.Tensor], torch.Tensor]
    labels: bool = True
