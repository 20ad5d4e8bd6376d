"""A BYOL (ssl) checkpoint as export and the Python API run it: uint8 images -> the run's preprocessing ->
the online backbone's pooled features (the input of its fc, what P2's settings fine-tune); and what an ssl
checkpoint holds besides the weights, checked."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlcv.config import MAX_SIDE
from dlcv.data import augment
from dlcv.engine import checkpoint
from dlcv.inference import (MEAN, SIZE, STD, Exportable, checkpoint_batch_size, checkpoint_numerics, entries_problem,
                            is_size)

TASK = "ssl"
REQUIRE = ()  # besides the weights and the config (engine.checkpoint: CHECKPOINT_KEYS)

PREPROCESS_CHECKS = {
    "image_size": SIZE,
    "input_size": (lambda v: v is None or is_size(v), f"null or a size in 1..{MAX_SIDE} px"),
    "mean": MEAN,
    "std": STD,
}


def checkpoint_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with an ssl checkpoint's preprocessing (its config's data section), or None."""
    return entries_problem(state["config"]["data"], PREPROCESS_CHECKS, "config data",
                           required=("image_size", "mean", "std"))


def read_checkpoint(path) -> dict[str, Any]:
    """An ssl checkpoint, checked (engine.checkpoint.load); anything else is one clear error."""
    return checkpoint.load(path, TASK, REQUIRE, checkpoint_problem)


def preprocess_of(state: dict[str, Any]) -> dict[str, Any]:
    """An ssl checkpoint's preprocessing in a classify checkpoint's terms (its config's data section)."""
    data = state["config"]["data"]
    return {"image_size": data["image_size"], "input_size": data.get("input_size"), "mean": data["mean"],
            "std": data["std"], "tta": None}


class BackboneGraph(nn.Module):
    """Float RGB in [0, 1], N x 3 x S x S (S: the run's image_size) -> the model's input side -> normalised
    -> the backbone's pooled features, fp32."""

    def __init__(self, backbone: nn.Module, meta: dict[str, Any]):
        super().__init__()
        self.backbone, self.input_size = backbone, meta.get("input_size")
        self.register_buffer("mean", torch.tensor(meta["mean"]), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"]), persistent=False)
        self.memory_format = torch.contiguous_format  # the layout the backbone runs in (Embedder sets it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from dlcv.models.byol import resnet_features
        x = augment.normalize(augment.resize(x, self.input_size), self.mean, self.std)
        return resnet_features(self.backbone, x.contiguous(memory_format=self.memory_format)).float()


def backbone_of(state: dict[str, Any]) -> nn.Module:
    """The online backbone of an ssl checkpoint: its torchvision ResNet, in eval mode."""
    from dlcv.models import create_model
    from dlcv.statedict import load_strict
    m = state["config"]["model"]
    net = create_model(m["name"], num_classes=1000, weights=None, **m["options"])
    weights = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    load_strict(net, weights, "the checkpoint's backbone")
    return net.eval()


class Embedder:
    """An ssl checkpoint's backbone as its run ran it: features of uint8 images, in its numerics."""

    def __init__(self, state: dict[str, Any], device: torch.device, precision: str = "auto",
                 batch_size: int | None = None, where: str = "checkpoint"):
        self.numerics = checkpoint_numerics(state, device, precision, where)
        self.meta, self.device = preprocess_of(state), device
        self.batch_size = checkpoint_batch_size(state, batch_size)
        backbone = backbone_of(state).to(device).to(memory_format=self.numerics.memory_format)
        self.graph = BackboneGraph(backbone, self.meta).to(device)
        self.graph.memory_format = self.numerics.memory_format

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """fp32 features of uint8 images N x 3 x S x S, on the CPU."""
        with torch.no_grad(), self.numerics.autocast(self.device):
            return self.graph(images.to(self.device).float().div_(255)).cpu()


def exportable(state: dict[str, Any], tta: bool = True) -> Exportable:
    """What `dlcv export` writes for an ssl checkpoint: the backbone's features (no classes, no views)."""
    meta = preprocess_of(state)
    graph = BackboneGraph(backbone_of(state), meta).eval()
    reference = Embedder(state, torch.device("cpu"), "fp32")
    metadata = {"classes": None, "image_size": meta["image_size"],
                "input_size": meta["input_size"] or meta["image_size"], "mean": meta["mean"], "std": meta["std"],
                "views": None, "infer_scale": None}
    return Exportable(graph, ("features",), metadata, meta["image_size"], reference.features, labels=False)
