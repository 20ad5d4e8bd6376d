"""BYOL's two augmented views of a batch, made on the device with per-sample random parameters.

Hand-written for the reason given in `augment.py` (torchvision's v2 transforms draw one parameter set
per call). The pipeline is BYOL's (Grill et al. 2020, table 6): random resized crop, horizontal flip,
colour jitter with probability 0.8, grayscale 0.2, Gaussian blur (1.0 / 0.1) and solarisation
(0.0 / 0.2) - the last two asymmetric between the views. Two simplifications, both batch-friendly:
jitter is applied in a fixed order (torchvision shuffles it) and the hue shift is a rotation of the
chroma plane in YIQ space rather than a shift of HSV hue (the same effect for small shifts; linear,
so one matrix per image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlcv.data.augment import GlobalDraw, random_resized_crop

_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


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
    grayscale: float = 0.2
    blur: tuple = (1.0, 0.1)  # probability per view
    blur_sigma: tuple = (0.1, 2.0)
    solarize: tuple = (0.0, 0.2)  # probability per view


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def colour_jitter(x: torch.Tensor, spec: ViewSpec, draw: GlobalDraw) -> torch.Tensor:
    apply = _per_image(draw.chance(spec.jitter))
    b = draw.uniform(1 - spec.brightness, 1 + spec.brightness)
    c = draw.uniform(1 - spec.contrast, 1 + spec.contrast)
    s = draw.uniform(1 - spec.saturation, 1 + spec.saturation)
    h = draw.uniform(-spec.hue, spec.hue) * (2 * math.pi)
    y = (x * _per_image(b)).clamp(0, 1)
    mean = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - mean) * _per_image(c) + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * _per_image(s) + gray).clamp(0, 1)
    # hue: rotate (I, Q) by angle h in YIQ space, one 3x3 matrix per image
    to_yiq = _RGB_TO_YIQ.to(x.device, x.dtype)
    cos, sin, one, zero = torch.cos(h), torch.sin(h), torch.ones_like(h), torch.zeros_like(h)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                            torch.stack([zero, sin, cos], 1)], 1)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # N x 3 x 3
    y = torch.einsum("nij,njhw->nihw", matrix, y).clamp(0, 1)
    return torch.where(apply, y, x)


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
    y = colour_jitter(y, spec, draw)
    y = torch.where(_per_image(draw.chance(spec.grayscale)), _gray(y).expand_as(y), y)
    blur, sigma = draw.chance(spec.blur[view]), draw.uniform(*spec.blur_sigma)
    if blur.any():
        y = y.clone()
        y[blur] = gaussian_blur(y[blur], sigma[blur])
    solarize = _per_image(draw.chance(spec.solarize[view]))
    return torch.where(solarize & (y >= 0.5), 1 - y, y)


def two_views(x: torch.Tensor, spec: ViewSpec, out_size: int, gen: torch.Generator, global_size: int,
              offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    draw = GlobalDraw(gen, global_size, offset, x.shape[0], x.device)
    return one_view(x, spec, 0, out_size, draw), one_view(x, spec, 1, out_size, draw)
