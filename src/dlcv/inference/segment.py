"""A segmenter as validation, the mask snapshots, predict (hw1_3.sh) and export run it: uint8 tiles -> the
run's normalisation -> its resolution (data.infer_scale) and test-time views (mirror images, rotations,
scales), in its precision and memory layout -> fp32 logits at the tiles' size; and what a segment
checkpoint holds besides the weights, checked."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcv.data import augment
from dlcv.data.masks import CLASS_NAMES
from dlcv.engine import checkpoint
from dlcv.engine.precision import Numerics
from dlcv.inference import (MEAN, STD, Exportable, are_numbers, checkpoint_batch_size, checkpoint_numerics,
                            entries_problem)

TASK = "segment"
# what predict reads besides the weights and the config (engine.checkpoint: CHECKPOINT_KEYS)
REQUIRE = ("preprocess",)


def _factor(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 4


def _views_ok(v) -> bool:
    return v is None or isinstance(v, dict) and all(isinstance(v.get(k, False), bool) for k in ("flip", "rotate90")) \
        and are_numbers(v.get("scales", [1.0]), None, lambda x: _factor(x))


PREPROCESS_CHECKS = {
    "mean": MEAN,
    "std": STD,
    "infer_scale": (_factor, "a factor in (0, 4]"),
    "tta": (_views_ok, "null or a test-time augmentation mapping (flip, rotate90, scales)"),
}


def checkpoint_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a segment checkpoint's preprocessing, or None."""
    return entries_problem(state["preprocess"], PREPROCESS_CHECKS, "preprocess")


def read_checkpoint(path) -> dict[str, Any]:
    """A segment checkpoint, checked (engine.checkpoint.load); anything else is one clear error."""
    return checkpoint.load(path, TASK, REQUIRE, checkpoint_problem)


def tta_logits(model: nn.Module, x: torch.Tensor, tta: dict[str, Any] | None) -> torch.Tensor:
    """fp32 logits N x C x H x W averaged over test-time views of the tiles, each mapped back before
    averaging: with `flip` also the mirror image, with `rotate90` also the 90/180/270-degree rotations
    (both: the 8 symmetries of the square). Satellite tiles have no up or down, so every view is a fair
    sample. No tta: the plain logits."""
    mirrors = (False, True) if tta and tta["flip"] else (False,)
    turns = range(4) if tta and tta["rotate90"] else range(1)
    layout = augment.memory_format_of(x)
    total = None
    for mirror in mirrors:
        for k in turns:
            view = torch.rot90(x.flip(-1) if mirror else x, k, (-2, -1)).contiguous(memory_format=layout)
            out = torch.rot90(model(view)["out"].float(), -k, (-2, -1))
            out = out.flip(-1) if mirror else out
            total = out if total is None else total + out
    return total / (len(mirrors) * len(turns))


def tile_logits(model: nn.Module, x: torch.Tensor, tta: dict[str, Any] | None, scale: float = 1.0) -> torch.Tensor:
    """fp32 logits at the tiles' size, averaged over the test-time scales (`tta["scales"]`, default [1]):
    per scale s the tiles resized by scale x s (antialiased when shrunk), tta_logits there, the logits
    resized back (bilinear). A smaller view shows each pixel more context, a larger one more detail."""
    scales = (tta or {}).get("scales") or [1.0]
    return sum(_scaled_logits(model, x, tta, scale * s) for s in scales) / len(scales)


def _scaled_logits(model: nn.Module, x: torch.Tensor, tta: dict[str, Any] | None, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return tta_logits(model, x, tta)
    size = x.shape[-2:]
    if min(size) * scale >= 1:
        small = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1,
                              recompute_scale_factor=True)
    else:  # a side would shrink to no pixel (a 3 px strip at scale 0.25): keep one
        small = F.interpolate(x, size=[max(1, round(side * scale)) for side in size], mode="bilinear",
                              align_corners=False, antialias=scale < 1)
    logits = tta_logits(model, small.contiguous(memory_format=augment.memory_format_of(x)), tta)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# The largest side (in input pixels) that goes through the model whole. A larger image goes through in
# windows of WINDOW x WINDOW whose outer WINDOW_MARGIN pixels are dropped (they lack context), so memory is
# that of one window whatever the image's size: a 4000x4000 JPEG whole took over 5 GB on a CPU. The course's
# 512 px tiles, and anything validation sees, go whole.
WINDOW = 1024
WINDOW_MARGIN = 128


# A batch size counts tiles of the course's side, 512 px: a batch of larger tiles holds proportionally fewer
# (at least one), so its memory stays what the run's batch of such tiles takes, whatever the tiles' size
# (8 tiles of 1024 px in one batch of 8 took 4.2 GB on a CPU, more than a 4000x4000 image in windows).
BATCH_TILE_PIXELS = 512 * 512


def goes_whole(height: int, width: int) -> bool:
    """Whether an image of this size goes through the model whole (else window by window)."""
    return max(height, width) <= WINDOW


def windows(size: int, window: int = WINDOW, margin: int = WINDOW_MARGIN) -> list[tuple[int, int, int, int]]:
    """Along one side of `size` pixels: (start, end) of each window and (keep_start, keep_end), the part of
    it whose prediction is kept. The kept parts partition 0..size and each lies at least `margin` inside its
    window, except at the image's own borders."""
    if size <= window:
        return [(0, size, 0, size)]
    stride = window - 2 * margin
    starts = list(range(0, size - window, stride)) + [size - window]
    keep_ends = [start + window - margin for start in starts[:-1]] + [size]
    keep_starts = [0] + keep_ends[:-1]
    return [(s, s + window, k0, k1) for s, k0, k1 in zip(starts, keep_starts, keep_ends)]


def segment_classes(state: dict[str, Any]) -> list[str]:
    """The class names of a segment checkpoint, in the order of its logits: the one place they are read (a
    checkpoint of a dlcv before segment recorded them: the course's seven, data/masks.py)."""
    return list(state.get("classes", CLASS_NAMES))


class SegmenterGraph(nn.Module):
    """What predict computes, as one module: validation and predict run it, and `dlcv export` writes it out.
    Float RGB in [0, 1], N x 3 x H x W (any size) -> normalised -> the run's resolution (infer_scale) and
    test-time views (tile_logits) -> fp32 logits N x C x H x W."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        super().__init__()
        self.model, self.tta, self.scale = model, meta.get("tta"), meta.get("infer_scale", 1.0)
        self.register_buffer("mean", torch.tensor(meta["mean"]), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"]), persistent=False)
        self.memory_format = torch.contiguous_format  # the layout the model runs in (Segmenter sets it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = augment.normalize(x, self.mean, self.std).contiguous(memory_format=self.memory_format)
        return tile_logits(self.model, x, self.tta, self.scale)


class Segmenter:
    """`model` (in eval mode) with what its run validated with: `meta`, a segment checkpoint's
    "preprocess" (mean / std, test-time views, infer_scale), its numerics and evaluation batch size."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], numerics: Numerics, batch_size: int,
                 device: torch.device):
        self.model, self.meta, self.numerics, self.batch_size, self.device = model, meta, numerics, batch_size, device
        self.graph = SegmenterGraph(model, meta).to(device)
        self.graph.memory_format = numerics.memory_format

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], device: torch.device, precision: str = "auto",
                        batch_size: int | None = None, where: str = "checkpoint",
                        compile_model: bool = False) -> Segmenter:
        """The model of a segment checkpoint, on the device, as its run validated it (`precision`: auto,
        or another for this device, see engine.precision.for_predict). `compile_model`: torch.compile
        with inductor's weight freezing (the weights become constants, folded and pre-packed for oneDNN):
        the same masks up to kernel noise, VGG16-FCN32s 1.59x the tiles/s on a 2-core Zen 5 CPU
        (benchmarks/fcn32s_cpu.py) but 1.02x on a 2-core AMX Xeon (end to end), after a few seconds of
        compiling per input shape: an option, not the default."""
        from dlcv.models import model_from_checkpoint  # here: an exported model runs without dlcv's model code
        numerics = checkpoint_numerics(state, device, precision, where)
        model = model_from_checkpoint(state, len(segment_classes(state))).to(device).eval()
        model = model.to(memory_format=numerics.memory_format)
        if compile_model:
            # static shapes: a tile size and each test-time scale compile once instead of one slower dynamic
            # graph. No FX graph cache: in torch 2.14.1 a graph cached under one ATEN_CPU_CAPABILITY and
            # loaded under another returns NaN logits (measured: written with AVX-512 kernels, read with
            # avx2), and each compile is a few seconds anyway.
            model = torch.compile(model, options={"freezing": True, "fx_graph_cache": False}, dynamic=False)
        return cls(model, state["preprocess"], numerics, checkpoint_batch_size(state, batch_size), device)

    def tiles_per_pass(self, height: int, width: int) -> int:
        """Tiles of this size that go through the model at once: batch_size, fewer for tiles over 512 px
        (BATCH_TILE_PIXELS)."""
        return max(1, min(self.batch_size, self.batch_size * BATCH_TILE_PIXELS // (height * width)))

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """fp32 logits N x C x H x W of uint8 tiles N x 3 x H x W (one size), averaged over the views."""
        return torch.cat([self._logits(chunk) for chunk in tiles.split(self.tiles_per_pass(*tiles.shape[-2:]))])

    def _logits(self, tiles: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.numerics.autocast(self.device):
            return self.graph(tiles.to(self.device).float().div_(255))

    def masks(self, tiles: torch.Tensor) -> torch.Tensor:
        """N x H x W uint8 class indices of uint8 tiles N x 3 x H x W (one size); see masks_of."""
        return masks_of(self._logits, tiles, self.tiles_per_pass(*tiles.shape[-2:]))


def masks_of(logits, tiles: torch.Tensor, per_pass: int | None = None) -> torch.Tensor:
    """N x H x W uint8 class indices of uint8 tiles N x 3 x H x W (one size) from `logits` (uint8 tiles ->
    fp32 logits: a Segmenter's, or an exported model's), at most `per_pass` tiles at a time; a tile with a
    side over WINDOW goes through window by window (see WINDOW), one at a time."""
    height, width = tiles.shape[-2:]
    if goes_whole(height, width):
        return torch.cat([logits(chunk).argmax(1).to(torch.uint8).cpu()
                          for chunk in tiles.split(per_pass or len(tiles))])
    out = torch.empty((len(tiles), height, width), dtype=torch.uint8)
    for n in range(len(tiles)):
        for y0, y1, ky0, ky1 in windows(height):
            for x0, x1, kx0, kx1 in windows(width):
                window_logits = logits(tiles[n:n + 1, :, y0:y1, x0:x1])[0]
                kept = window_logits[:, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
                out[n, ky0:ky1, kx0:kx1] = kept.argmax(0).to(torch.uint8).cpu()
    return out


def exportable(state: dict[str, Any], tta: bool = True) -> Exportable:
    """What `dlcv export` writes for a segment checkpoint: SegmenterGraph (fp32, on the CPU), and what
    predict computes to verify it against."""
    from dlcv.models import model_from_checkpoint
    meta = {**state["preprocess"], **({} if tta else {"tta": None})}
    graph = SegmenterGraph(model_from_checkpoint(state, len(segment_classes(state))).eval(), meta).eval()
    reference = Segmenter.from_checkpoint({**state, "preprocess": meta}, torch.device("cpu"), "fp32")
    metadata = {"classes": segment_classes(state), "image_size": None, "input_size": None, "mean": meta["mean"],
                "std": meta["std"], "views": meta.get("tta"), "infer_scale": meta.get("infer_scale", 1.0),
                **({"masks": state["masks"]} if state.get("masks") else {})}  # a dataset's own mask classes
    return Exportable(graph, ("logits",), metadata, None, reference.logits)
