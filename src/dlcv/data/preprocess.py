"""The one path from cached uint8 images to a model's input: [0, 1] floats, resized to the model's input
size, optionally batch-augmented on the device, normalised with the model's mean and std."""
from __future__ import annotations

from typing import Any

import torch

from dlcv.data import augment


class Preprocess:
    """uint8 N x 3 x H x W -> normalised float, resized to `meta["input_size"]` (a side; absent or None:
    kept), on the device. Every task's training, validation and predict path goes through it."""

    def __init__(self, meta: dict[str, Any], device: torch.device):
        self.input_size = meta.get("input_size")
        self.mean = torch.tensor(meta["mean"], device=device)
        self.std = torch.tensor(meta["std"], device=device)

    def __call__(self, x_uint8: torch.Tensor, aug: augment.AugmentSpec | None = None,
                 gen: torch.Generator | None = None, global_size: int = 0, offset: int = 0,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        x = augment.resize(x_uint8.float().div_(255), self.input_size)
        if aug is not None:
            x = augment.augment_batch(x, aug, gen, global_size, offset, flip)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (e.g. views augmented elsewhere) -> the model's normalised input."""
        return augment.normalize(x, self.mean, self.std)
