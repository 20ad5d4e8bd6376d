"""A classifier as validation, feature snapshots, predict (hw1_1.sh, hw1_2.sh) and embed run it: uint8
images -> the run's preprocessing -> its test-time views (mirror image, shifts), in its precision and
memory layout."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcv.data import augment
from dlcv.data.preprocess import Preprocess
from dlcv.engine.precision import Numerics
from dlcv.inference import checkpoint_batch_size, checkpoint_numerics
from dlcv.models import model_from_checkpoint, model_spec


def tta_logits(model: nn.Module, x: torch.Tensor, tta: dict[str, Any] | None) -> torch.Tensor:
    """fp32 logits, averaged over test-time views as airbench does: the image and its mirror image
    (`flip`), and with `translate` t also both shifted by t pixels up-left and down-right (reflect
    padding), weighted 1/2 unshifted and 1/4 per shift. No tta: the plain logits."""
    def views_of(z):
        return [z, z.flip(-1)] if tta and tta["flip"] else [z]

    def mean_logits(z):
        outs = [model(v).float() for v in views_of(z)]
        return sum(outs) / len(outs)

    logits = mean_logits(x)
    t = tta["translate"] if tta else 0
    if t:
        h, w = x.shape[-2:]
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2 * t:, 2 * t:]]
        layout = augment.memory_format_of(x)
        logits = 0.5 * logits + 0.25 * sum(mean_logits(z.contiguous(memory_format=layout)) for z in shifted)
    return logits


@contextlib.contextmanager
def capture_head_input(model: nn.Module, head: str):
    """Collects the input of the final layer (the feature vector) of every forward pass."""
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(head).register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    try:
        yield captured
    finally:
        handle.remove()


class Classifier:
    """`model` (in eval mode) with what its run validated with: `meta`, a classify checkpoint's
    "preprocess" (image sizes, mean / std, test-time views), its numerics and evaluation batch size."""

    def __init__(self, model: nn.Module, model_name: str, meta: dict[str, Any], numerics: Numerics,
                 batch_size: int, device: torch.device):
        self.model, self.meta, self.numerics, self.batch_size, self.device = model, meta, numerics, batch_size, device
        self.head = model_spec(model_name).head
        self.preprocess = Preprocess(meta, device)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], device: torch.device, precision: str = "auto",
                        batch_size: int | None = None, where: str = "checkpoint") -> Classifier:
        """The model of a classify checkpoint, on the device, as its run validated it (`precision`:
        auto, or another for this device, see engine.precision.for_predict)."""
        numerics = checkpoint_numerics(state, device, precision, where)
        model = model_from_checkpoint(state, len(state["classes"])).to(device).eval()
        return cls(model.to(memory_format=numerics.memory_format), state["config"]["model"]["name"],
                   state["preprocess"], numerics, checkpoint_batch_size(state, batch_size), device)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess(images.to(self.device)).contiguous(memory_format=self.numerics.memory_format)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """fp32 logits of uint8 images N x 3 x H x W, averaged over the test-time views."""
        with torch.no_grad(), self.numerics.autocast(self.device):
            return tta_logits(self.model, self._inputs(images), self.meta.get("tta"))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The final layer's input (the feature vector) for the plain images, whatever the test-time
        views: fp32 on the CPU."""
        with torch.no_grad(), self.numerics.autocast(self.device), \
                capture_head_input(self.model, self.head) as captured:
            self.model(self._inputs(images))
        return torch.cat(captured)
