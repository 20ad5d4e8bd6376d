"""The registry behind `create_model(name, num_classes=..., weights=..., **options)`: builders register
themselves with `@register_model` when their module (classifiers, segmenters) is imported."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from dlcv.errors import DlcvError
from dlcv.statedict import load_strict


# the statistics every registered model's pretrained weights were trained with (torchvision's, and the
# EfficientNet-Lite port's own example); models trained from scratch use them too
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[..., nn.Module]
    head: str  # dotted name of the final layer; its input is the "second-last-layer" feature vector
    task: str
    input_size: int  # the side its recipes feed it (architecture diagrams use it)
    cpu_channels_last: bool  # train.channels_last=auto on CPU (measured per model; always on with CUDA)
    cpu_bf16: bool  # train.precision=auto picks bf16 on a CPU with native bf16 (measured per model)
    init_from_data: bool  # the model has init_from_data(images): run once on normalised training images
    mean: tuple[float, float, float]  # input normalisation (data.mean / data.std: null = these)
    std: tuple[float, float, float]
    min_input: int = 1  # the smallest input side it runs on (its strides and pooling leave a pixel)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, head: str, task: str = "classify", input_size: int | None = None,
                   cpu_channels_last: bool = True, cpu_bf16: bool = True, init_from_data: bool = False,
                   mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                   min_input: int = 1):
    def wrap(fn):
        _REGISTRY[name] = ModelSpec(fn, head, task, input_size or (512 if task == "segment" else 224),
                                    cpu_channels_last, cpu_bf16, init_from_data, mean, std, min_input)
        return fn
    return wrap


def list_models(task: str | None = None) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def model_spec(name: str) -> ModelSpec:
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
    for key, value in options.items():
        _check_option(name, key, value, params[key].default)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DlcvError(f"model '{name}': needs at least 1 class, got {num_classes!r}")
    try:
        return spec.builder(num_classes=num_classes, weights=weights, **options)
    except (ValueError, TypeError, RuntimeError) as exc:  # a combination of options the architecture rejects
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlcvError(f"model '{name}' cannot be built with model.options {options}: {first}") from None


MAX_OPTION_SIZE = 4096  # the largest size option of a registered model is fcn32s_vgg16's fc_channels, 4096


def _check_option(model: str, key: str, value, default) -> None:
    """A model option has its default's type; sizes (whole numbers, alone or in a list) are in
    1..MAX_OPTION_SIZE (a width of 10^5 would allocate 10^10 weights per layer) and a dropout is a fraction
    in [0, 1). A default of None accepts anything (the builder checks it)."""
    where = f"model '{model}' option '{key}'"
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int) or isinstance(default, (list, tuple)) and default and isinstance(default[0], int):
        ok = isinstance(value, (list, tuple)) == isinstance(default, (list, tuple)) and bool(numbers) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_OPTION_SIZE for v in numbers)
        expected = f"{'a list of whole numbers' if isinstance(default, (list, tuple)) else 'a whole number'} in " \
                   f"1..{MAX_OPTION_SIZE}"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            0 <= value < 1 if "dropout" in key else math.isfinite(value))
        expected = "a fraction in [0, 1)" if "dropout" in key else "a finite number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise DlcvError(f"{where}: invalid value {value!r}; expected {expected}")


def model_from_checkpoint(state: dict, num_classes: int) -> nn.Module:
    """Rebuilds the model a dlcv checkpoint was trained with (its config) and loads its weights."""
    m = state["config"]["model"]
    model = create_model(m["name"], num_classes=num_classes, weights=None, **m["options"])
    load_strict(model, state["model"], "the checkpoint's weights")
    return model
