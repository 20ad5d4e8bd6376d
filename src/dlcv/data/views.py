"""BYOL's two augmented views of a batch, made on the device with per-sample random parameters.

Hand-written for the reason given in `augment.py` (torchvision's v2 transforms draw one parameter set
per call). The pipeline is BYOL's (Grill et al. 2020, table 6): random resized crop, horizontal flip,
colour jitter with probability 0.8 (augment.colour_jitter), grayscale 0.2, Gaussian blur (1.0 / 0.1)
and solarisation (0.0 / 0.2) - the last two asymmetric between the views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlcv.data.augment import GlobalDraw, colour_jitter, grayscale, per_image, random_resized_crop
from dlcv.errors import DlcvError


@dataclass(frozen=True)
class ViewSpec:
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8  # probability of the colour jitter
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # fraction of a full turn, like ColorJitter(hue=0.1)
    jitter_order: str = "random"  # ColorJitter's per-image shuffle of the four adjustments; or "fixed"
    hue_space: str = "hsv"  # ColorJitter's hue shift; or "yiq", a linear rotation (colour_jitter)
    grayscale: float = 0.2
    blur: tuple = (1.0, 0.1)  # probability per view
    blur_sigma: tuple = (0.1, 2.0)
    solarize: tuple = (0.0, 0.2)  # probability per view

    def __post_init__(self):
        for key, allowed in (("jitter_order", ("fixed", "random")), ("hue_space", ("yiq", "hsv"))):
            if getattr(self, key) not in allowed:
                raise DlcvError(f"views.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")

    @classmethod
    def from_config(cls, views: dict) -> "ViewSpec":
        """From a resolved config's `views` section (YAML lists as tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in views.items()})


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (a grouped convolution), kernel ~10% of the side
    as in BYOL (23 px at 224)."""
    n, ch, h, w = x.shape
    size = max(3, int(0.1 * h) // 2 * 2 + 1)
    offsets = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    kernel = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n*ch) x size
    y = F.pad(x.reshape(1, n * ch, h, w), (size // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(n * ch, 1, 1, size), groups=n * ch)
    y = F.conv2d(y, kernel.view(n * ch, 1, size, 1), groups=n * ch)
    return y.view(n, ch, h, w)


def one_view(x: torch.Tensor, spec: ViewSpec, view: int, out_size: int, draw: GlobalDraw) -> torch.Tensor:
    """x: float images in [0, 1] (this process's slice). Returns the augmented view, still in [0, 1]."""
    flip = draw.chance(spec.flip)
    y = random_resized_crop(x, out_size, draw, tuple(spec.crop_scale), tuple(spec.crop_ratio), flip=flip)
    y = colour_jitter(y, draw, spec.brightness, spec.contrast, spec.saturation, spec.hue, p=spec.jitter,
                      order=spec.jitter_order, hue_space=spec.hue_space)
    y = torch.where(per_image(draw.chance(spec.grayscale)), grayscale(y).expand_as(y), y)
    blur, sigma = draw.chance(spec.blur[view]), draw.uniform(*spec.blur_sigma)
    if spec.blur[view] > 0:  # every image blurred, then picked: indexing the chosen ones waits for the GPU
        y = torch.where(per_image(blur), gaussian_blur(y, sigma), y)
    solarize = per_image(draw.chance(spec.solarize[view]))
    return torch.where(solarize & (y >= 0.5), 1 - y, y)


def two_views(x: torch.Tensor, spec: ViewSpec, out_size: int, gen: torch.Generator, global_size: int,
              offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    draw = GlobalDraw(gen, global_size, offset, x.shape[0], x.device)
    return one_view(x, spec, 0, out_size, draw), one_view(x, spec, 1, out_size, draw)
