"""Pretrained weights from a torchvision weight name (downloads, for users online) or a local file."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from dlcv.errors import DlcvError
from dlcv.statedict import load_strict

_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def is_weight_file(weights: str) -> bool:
    return Path(weights).suffix in _FILE_SUFFIXES or Path(weights).exists()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one wrapped as {"state_dict": ...} / a dlcv checkpoint {"model": ...}."""
    path = Path(path)
    if not path.is_file():
        raise DlcvError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DlcvError(f"cannot read weights file {path}: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DlcvError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def torchvision_state_dict(arch: str, name: str) -> dict[str, torch.Tensor]:
    """Weights by torchvision name ("DEFAULT", "IMAGENET1K_V1" or "ResNet50_Weights.IMAGENET1K_V2")."""
    try:
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[name.split(".")[-1]] if name.split(".")[-1] != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        valid = ["DEFAULT"] + [w.name for w in torchvision.models.get_model_weights(arch)]
        raise DlcvError(f"unknown weights '{name}' for {arch}; valid: {', '.join(valid)} or a local file") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise DlcvError(
            f"could not download torchvision weights {weights} ({type(exc).__name__}: {exc}). Without network, "
            f"fetch {weights.url} on a connected machine and pass model.weights=/path/to/file.pth") from None


def pretrained_state_dict(weights: str, arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict named by `weights` (a local file or a torchvision name for `arch`) and a label for
    errors."""
    if is_weight_file(weights):
        return read_state_dict(weights), f"weights file {weights}"
    return torchvision_state_dict(arch, weights), f"torchvision weights {weights}"


def load_pretrained(model: nn.Module, weights: str | None, arch: str) -> None:
    """Loads ImageNet-style weights into `model` (a torchvision `arch` with its original head)."""
    if weights is not None:
        load_strict(model, *pretrained_state_dict(weights, arch))
