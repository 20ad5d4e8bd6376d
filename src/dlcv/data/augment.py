"""Batch augmentation on the device, with per-sample random parameters.

Written by hand because torchvision's v2 transforms draw ONE set of random parameters per call: applied
to a batch tensor every image gets the same crop/flip/angle, and applied per image they bring back the
per-image Python loop this path exists to remove (airbench does the same, for the same reason).

Random parameters are drawn for the whole *global* batch from a generator seeded by (seed, epoch,
step) and then sliced to this process's share, so N processes see exactly the images and augmentations
one process would: DDP runs match single-process runs, and resume is exact without saving generator state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlcv.data.masks import SCORED
from dlcv.errors import DlcvError


@dataclass(frozen=True)
class AugmentSpec:
    flip: bool = False
    alternate_flip: bool = False  # airbench: flips alternate per image over epochs (the task draws them)
    crop_padding: int = 0
    pad_mode: str = "zeros"  # torchvision RandomCrop's default fill; "reflect" is better for small images
    rotation: float = 0.0  # max degrees, like RandomRotation(degrees)
    cutout: int = 0  # side of a random square set to zero (0 = off)
    resized_crop_scale: tuple | None = None  # (min, max) area: RandomResizedCrop to the same size first
    color_jitter: tuple | None = None  # (brightness, contrast, saturation, hue), like ColorJitter(...)

    def __post_init__(self):
        if self.color_jitter is not None and len(self.color_jitter) != 4:
            raise DlcvError("augment.color_jitter needs 4 values (brightness, contrast, saturation, hue), "
                            f"got {list(self.color_jitter)}")


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where `x` is in it (and not also plainly contiguous), else contiguous: test-time views
    (flips, shifts, rotations) are put back into the layout the model was given."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, mode: str) -> torch.Tensor:
    """Pad by `padding`, then cut the original size at per-sample offsets (dy, dx) in [0, 2*padding]."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="constant" if mode == "zeros" else mode)
    rows = dy.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_rotation(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by its own angle; corners filled with zeros (RandomRotation)."""
    rad = degrees * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy.view(-1, 1, 1)).abs() <= size // 2) & ((xs - cx.view(-1, 1, 1)).abs() <= size // 2)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


class GlobalDraw:
    """Random parameters drawn for the whole global batch from `gen`, returned for this process's slice
    [offset, offset + n) on `device` (see the module docstring)."""

    def __init__(self, gen: torch.Generator, global_size: int, offset: int, n: int, device: torch.device):
        self.gen, self.size, self.lo, self.hi, self.device = gen, global_size, offset, offset + n, device

    def _slice(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.lo:self.hi].to(self.device)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return self._slice(low + (high - low) * torch.rand(self.size, generator=self.gen, device=self.gen.device))

    def chance(self, p: float) -> torch.Tensor:
        return self._slice(torch.rand(self.size, generator=self.gen, device=self.gen.device) < p)

    def integers(self, high: int) -> torch.Tensor:
        return self._slice(torch.randint(high, (self.size,), generator=self.gen, device=self.gen.device))


_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _hue_yiq(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Hue change as a rotation of the (I, Q) chroma plane in YIQ space: linear (one 3x3 matrix per image),
    keeps each pixel's luma. Not HSV's shift (which keeps the max channel): on random colours the two
    differ by about half the change itself, and the turn runs the other way (a symmetric draw hides that)."""
    h = turn * (2 * math.pi)
    to_yiq = _RGB_TO_YIQ.to(x.device, x.dtype)
    cos, sin, one, zero = torch.cos(h), torch.sin(h), torch.ones_like(h), torch.zeros_like(h)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                            torch.stack([zero, sin, cos], 1)], 1)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # N x 3 x 3
    return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)


def _hue_hsv(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """torchvision's `adjust_hue` (RGB -> HSV, hue + turn mod 1, back) with one shift per image; torchvision's
    takes one shift per call."""
    top, bottom = x.max(1).values, x.min(1).values
    span = top - bottom
    safe = torch.where(span > 0, span, torch.ones_like(span))
    r, g, b = x.unbind(1)
    hue = torch.where(top == r, (g - b) / safe, torch.where(top == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(span > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + turn.view(-1, 1, 1)) % 1.0
    sat = span / torch.where(top > 0, top, torch.ones_like(top))  # top 0: span 0 too, so saturation 0
    # HSV -> RGB as f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + 6 H) mod 6, n = 5, 3, 1 for R, G, B
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + 6 * hue.unsqueeze(1)) % 6
    ramp = torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp(min=0)
    return (top.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)).clamp(0, 1)


def jitter_with(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                hue: torch.Tensor, order: torch.Tensor | None = None, hue_space: str = "hsv") -> torch.Tensor:
    """torchvision's brightness, contrast, saturation and hue adjustments with given per-image factors (hue
    as a fraction of a turn), in the fixed order b, c, s, h or in each image's own `order` (N x 4, a
    permutation of 0-3 per row, ColorJitter's `fn_idx`)."""
    def adjust(op: int, y: torch.Tensor) -> torch.Tensor:
        if op == 0:
            return (y * per_image(brightness)).clamp(0, 1)
        if op == 1:
            mean = grayscale(y).mean((2, 3), keepdim=True)
            return ((y - mean) * per_image(contrast) + mean).clamp(0, 1)
        if op == 2:
            gray = grayscale(y)
            return ((y - gray) * per_image(saturation) + gray).clamp(0, 1)
        return {"yiq": _hue_yiq, "hsv": _hue_hsv}[hue_space](y, hue)

    if order is None:
        for op in range(4):
            x = adjust(op, x)
        return x
    # each position computes all four adjustments and picks each image's: 4x the work of the fixed order,
    # but no indexing by a mask (which waits for the GPU)
    for position in range(4):
        chosen = per_image(order[:, position])
        x = torch.stack([adjust(op, x) for op in range(4)]).gather(
            0, chosen.expand_as(x).unsqueeze(0)).squeeze(0)
    return x


def colour_jitter(x: torch.Tensor, draw: GlobalDraw, brightness: float, contrast: float, saturation: float,
                  hue: float, p: float = 1.0, order: str = "random", hue_space: str = "hsv") -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) per image, applied with probability p, on float
    images in [0, 1]: by default torchvision's semantics (each image's own order of the four adjustments, hue
    as an HSV shift). `order="fixed"` and `hue_space="yiq"` are cheaper simplifications; in BYOL's A/B
    (docs/results-p2.md), torchvision's semantics gave the higher k-NN accuracy on both seeds."""
    apply = per_image(draw.chance(p))
    b = draw.uniform(1 - brightness, 1 + brightness)
    c = draw.uniform(1 - contrast, 1 + contrast)
    s = draw.uniform(1 - saturation, 1 + saturation)
    h = draw.uniform(-hue, hue)
    shuffle = None
    if order == "random":
        shuffle = torch.stack([draw.uniform(0, 1) for _ in range(4)], 1).argsort(1)
    return torch.where(apply, jitter_with(x, b, c, s, h, shuffle, hue_space), x)


def resized_crop_boxes(draw: GlobalDraw, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                       attempts: int = 10) -> tuple[torch.Tensor, ...]:
    """RandomResizedCrop's boxes for every image at once: centre x, centre y, width, height as fractions of
    the image's width and height.

    As torchvision's `RandomResizedCrop.get_params`: area fraction and log aspect ratio drawn up to 10 times,
    the first box that fits is taken, else the whole image centre-cropped to the nearest allowed aspect.
    Vectorised: all candidates are drawn at once. (Clamping a box that leaves the image instead would keep it
    large: mean area 0.535 against torchvision's 0.488 at scale 0.08-1, so easier views for BYOL.)"""
    area = torch.stack([draw.uniform(*scale) for _ in range(attempts)], 1)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(torch.stack([draw.uniform(*log_ratio) for _ in range(attempts)], 1))
    box_w = torch.sqrt(area * aspect * height / width)  # fractions of the width
    box_h = torch.sqrt(area / aspect * width / height)
    fits = (box_w <= 1) & (box_h <= 1)
    first = fits.float().argmax(1, keepdim=True)  # argmax returns the first maximum: the first box that fits
    fallback = min(max(width / height, ratio[0]), ratio[1])  # the whole image at the nearest allowed aspect
    any_fits = fits.any(1)
    box_w = torch.where(any_fits, box_w.gather(1, first).squeeze(1), min(1.0, fallback * height / width))
    box_h = torch.where(any_fits, box_h.gather(1, first).squeeze(1), min(1.0, width / (fallback * height)))
    half = torch.full_like(box_w, 0.5)  # the fallback is centred
    cx = (1 - box_w) * torch.where(any_fits, draw.uniform(0, 1), half) + box_w / 2
    cy = (1 - box_h) * torch.where(any_fits, draw.uniform(0, 1), half) + box_h / 2
    return cx, cy, box_w, box_h


def random_resized_crop(x: torch.Tensor, out_size: int, draw: GlobalDraw, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), flip: torch.Tensor | None = None) -> torch.Tensor:
    """RandomResizedCrop (+ optional horizontal flip) for every image at once with one affine grid_sample."""
    cx, cy, width, height = resized_crop_boxes(draw, x.shape[-2], x.shape[-1], scale, ratio)
    sx = width if flip is None else torch.where(flip, -width, width)
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([sx, zero, 2 * cx - 1], 1), torch.stack([zero, height, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment_batch(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator, global_size: int,
                  offset: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Augment `x` (this process's slice [offset, offset+len(x)) of a global batch of `global_size`).

    Order as the report's model-B pipeline: flip, rotation, padded random crop; then colour jitter and
    cutout. A random resized crop, when asked for, comes first. `flip`: per-image flips chosen by the
    caller (alternate_flip) instead of random ones.
    """
    draw = GlobalDraw(gen, global_size, offset, x.shape[0], x.device)
    if spec.resized_crop_scale:
        x = random_resized_crop(x, x.shape[-1], draw, tuple(spec.resized_crop_scale))
    if flip is not None:
        x = random_flip(x, flip)
    elif spec.flip:
        x = random_flip(x, draw.chance(0.5))
    if spec.rotation:
        x = random_rotation(x, draw.uniform(-spec.rotation, spec.rotation))
    if spec.crop_padding:
        span = 2 * spec.crop_padding + 1
        x = random_crop(x, spec.crop_padding, draw.integers(span), draw.integers(span), spec.pad_mode)
    if spec.color_jitter:
        x = colour_jitter(x, draw, *spec.color_jitter)
    if spec.cutout:
        x = random_cutout(x, spec.cutout, draw.integers(x.shape[-2]), draw.integers(x.shape[-1]))
    return x


# cos and sin of k * 90 degrees, exact (no float rounding), so a plain rotation samples pixel centres exactly
_COS90 = (1.0, 0.0, -1.0, 0.0)
_SIN90 = (0.0, 1.0, 0.0, -1.0)


def class_pixel(y: torch.Tensor, draw: GlobalDraw, classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per mask of `y` (N x H x W): a class drawn uniformly among those of 0..classes-1 it holds, then one of
    that class's pixels drawn uniformly. Returns the pixel's centre (x, y) as fractions of the side and
    whether the mask held any such class at all."""
    n, h, w = y.shape
    flat = y.reshape(n, -1)
    present = torch.stack([(flat == c).any(1) for c in range(classes)], 1)  # N x classes
    count = present.sum(1)
    rank = (draw.uniform(0, 1) * count).long().clamp(max=(count - 1).clamp(min=0))  # which present class
    cls = (present.cumsum(1) <= rank[:, None]).sum(1)
    members = (flat == cls[:, None]).cumsum(1)  # N x HW: pixels of the class so far
    pick = (draw.uniform(0, 1) * members[:, -1]).long() + 1  # the pick-th pixel of the class, 1-based
    index = torch.searchsorted(members, pick[:, None].clamp(max=members[:, -1:].clamp(min=1))).squeeze(1)
    return (index % w + 0.5) / w, (index // w + 0.5) / h, count > 0


def tile_geometry(x: torch.Tensor, y: torch.Tensor, draw: GlobalDraw, out_size: int, flip: bool = False,
                  rotate90: bool = False, scale=(1.0, 1.0), balanced: float = 0.0,
                  classes: int = SCORED) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation's joint geometry for a batch, each sample with its own parameters: horizontal and
    vertical flips (p=0.5 each), a rotation by k x 90 degrees (k uniform in 0..3), and a square random crop
    covering `scale` of the tile's area resized to `out_size` - composed into ONE affine map, applied by
    grid_sample to the images (bilinear) and to the masks (nearest, so no blended class values). With
    `balanced` p, that fraction of the crops is centred on a pixel of a class drawn uniformly among the
    tile's classes 0..classes-1 (class_pixel): rare classes are seen as often as common ones.

    x: N x C x H x W float, y: N x H x W integer classes. Flips and rotations alone are exact (the grid hits
    pixel centres). Written by hand because torchvision v2 draws one set of parameters per call, so a
    per-sample transform means a Python loop over images. On the 2-core CPU both cost ~70 ms per 8 tiles of
    512 px (measured); the gain is on a GPU, where the loop launches a dozen small kernels per image and
    this a fixed few per batch, and the draws follow the global batch (DDP = one process)."""
    n, device = x.shape[0], x.device
    ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
    # linear part L (output -> input coordinates, x first), starting at the identity
    l00, l01, l10, l11 = ones, zeros, zeros, ones
    if flip:
        sx = torch.where(draw.chance(0.5), -1.0, 1.0)
        sy = torch.where(draw.chance(0.5), -1.0, 1.0)
        l00, l11 = l00 * sx, l11 * sy
    if rotate90:
        k = draw.integers(4)
        cos = torch.tensor(_COS90, device=device)[k]
        sin = torch.tensor(_SIN90, device=device)[k]
        l00, l01, l10, l11 = cos * l00 - sin * l10, cos * l01 - sin * l11, sin * l00 + cos * l10, sin * l01 + cos * l11
    side = torch.sqrt(draw.uniform(*scale))  # crop side, fraction of the tile's side
    cx = (1 - side) * draw.uniform(0, 1) + side / 2  # crop centre, fractions of the side
    cy = (1 - side) * draw.uniform(0, 1) + side / 2
    if balanced:  # class-balanced crops: centred on a pixel of a class drawn uniformly, kept inside the tile
        px, py, found = class_pixel(y, draw, classes)
        on_class = draw.chance(balanced) & found
        cx = torch.where(on_class, px.clamp(side / 2, 1 - side / 2), cx)
        cy = torch.where(on_class, py.clamp(side / 2, 1 - side / 2), cy)
    theta = torch.stack([torch.stack([side * l00, side * l01, 2 * cx - 1], 1),
                         torch.stack([side * l10, side * l11, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), [n, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
    return x, y[:, 0].round().to(torch.uint8)
