"""The course's backbone file: a plain torchvision ResNet state_dict exported from a BYOL or a classifier
checkpoint (P2's settings B-E load it)."""
from __future__ import annotations

from pathlib import Path

import torch

from dlcv.engine import checkpoint
from dlcv.errors import DlcvError
from dlcv.models import create_model
from dlcv.models.byol import BACKBONES
from dlcv.statedict import load_strict, save_state_dict


def export_backbone(ckpt: str | Path, out: str | Path) -> str:
    """A plain torchvision ResNet state_dict (fc 1000 x features included, so it loads strictly into
    `torchvision.models.resnet50()`; a *_cifar model's into one with its 3x3 first conv) from a `dlcv ssl
    pretrain` checkpoint (the online backbone) or a `dlcv classify train` checkpoint of a torchvision ResNet
    (its fc, trained for other classes, is replaced by a freshly initialised 1000-class fc, seed 0).
    Returns the architecture name."""
    state = checkpoint.load(ckpt)
    arch = state["config"]["model"]["name"]
    if state["task"] == "ssl":
        weights = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    elif state["task"] == "classify" and arch in BACKBONES:
        if state["config"]["model"]["options"].get("freeze_backbone"):
            raise DlcvError(f"{ckpt}: a frozen-backbone run (FrozenBatchNorm2d) is not a backbone to export")
        weights = {k: v for k, v in state["model"].items() if not k.startswith("fc.")}
    else:
        raise DlcvError(f"{ckpt}: a checkpoint of task '{state['task']}' with model '{arch}'; export needs "
                        f"an ssl checkpoint or a classify checkpoint of {' / '.join(BACKBONES)}")
    torch.manual_seed(0)
    reference = create_model(arch, num_classes=1000)  # its seeded fc fills in a classifier's missing one
    if state["task"] == "classify":
        weights.update({"fc.weight": reference.fc.weight.detach(), "fc.bias": reference.fc.bias.detach()})
    load_strict(reference, weights, f"{ckpt} (exported backbone)")
    save_state_dict(weights, out)
    return arch
