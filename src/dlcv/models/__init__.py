"""A small registry of named model builders: `create_model(name, num_classes=..., weights=..., **options)`."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from dlcv.errors import DlcvError


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[..., nn.Module]
    head: str  # dotted name of the final layer; its input is the "second-last-layer" feature vector
    task: str
    input_size: int  # the side its recipes feed it (architecture diagrams use it)
    cpu_channels_last: bool  # train.channels_last=auto on CPU (measured per model; always on with CUDA)
    cpu_bf16: bool  # train.precision=auto picks bf16 on a CPU with native bf16 (measured per model)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, head: str, task: str = "classify", input_size: int | None = None,
                   cpu_channels_last: bool = True, cpu_bf16: bool = True):
    def wrap(fn):
        _REGISTRY[name] = ModelSpec(fn, head, task, input_size or (512 if task == "segment" else 224),
                                    cpu_channels_last, cpu_bf16)
        return fn
    return wrap


def list_models(task: str | None = None) -> list[str]:
    _import_builders()
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def model_spec(name: str) -> ModelSpec:
    _import_builders()
    if name not in _REGISTRY:
        raise DlcvError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, weights: str | None = None, **options) -> nn.Module:
    spec = model_spec(name)
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = [p for p in params if p not in ("num_classes", "weights")]
        raise DlcvError(f"model '{name}' has no option(s) {unknown}; valid model.options: {valid or 'none'}")
    return spec.builder(num_classes=num_classes, weights=weights, **options)


def model_from_checkpoint(state: dict, num_classes: int) -> nn.Module:
    """Rebuilds the model a dlcv checkpoint was trained with (its config) and loads its weights."""
    m = state["config"]["model"]
    model = create_model(m["name"], num_classes=num_classes, weights=None, **m["options"])
    model.load_state_dict(state["model"])
    return model


def norm_layer(channels: int, norm: str) -> nn.Module:
    """BatchNorm, or GroupNorm (batch-independent: small test models use it to check that DDP matches
    one process exactly, which per-process BatchNorm statistics cannot)."""
    if norm not in ("batch", "group"):
        raise DlcvError(f"model option norm must be 'batch' or 'group', got {norm!r}")
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(math.gcd(8, channels), channels)


def _import_builders() -> None:
    from dlcv.models import classifiers, segmenters  # noqa: F401  (register on import)
