"""A small, deterministic `hw1_data` tree in the course layout, generated procedurally in seconds.

P1: each class is a (shape, hue) pair drawn at a random place, size and hue jitter over a cluttered,
noisy background, so a model must learn shape and colour, not a single pixel.
P2: "mini" and "office" images are textured patterns (stripe orientation/frequency x palette) with
random crops, scales and colour shifts; office images have varying sizes like the real data.
P3: land-cover maps are Voronoi regions of the 7 classes (unknown rare); the satellite image gives each
class its own colour and texture plus noise, and the mask is written in the course palette.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dlcv.data.labels import write_csv
from dlcv.data.masks import SCORED, class_to_rgb
from dlcv.errors import DlcvError

SHAPES = ("disk", "square", "triangle", "ring", "cross")
MARKER = "synthetic.txt"  # in the tree's hw1_data folder: what a report built on it says
P3_VAL_IDS = (13, 62, 104)  # the report's mask-snapshot images exist in the synthetic set too


@dataclass(frozen=True)
class SynthSizes:
    """Each split holds at least one batch of every shipped recipe's default train.batch_size (p1_cpu's 512;
    p2_byol's and p2_supervised's 256, the latter on the 90% of mini it trains on), so a recipe runs on this
    tree unchanged but for data.root (tests/test_config.py checks it)."""
    p1_classes: int = 10
    p1_train_per_class: int = 52
    p1_val_per_class: int = 10
    p2_mini_classes: int = 8
    p2_mini_per_class: int = 36
    p2_office_classes: int = 6
    p2_office_train_per_class: int = 16
    p2_office_val_per_class: int = 6
    p3_train: int = 24
    p3_val: int = 8
    p3_size: int = 128


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = y - cy, x - cx
    if shape == "disk":
        return dy ** 2 + dx ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        d = np.sqrt(dy ** 2 + dx ** 2)
        return (d <= r) & (d >= r * 0.55)
    return (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r) | (np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)


def p1_image(label: int, n_classes: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    n_hues = -(-n_classes // len(SHAPES))
    shape = SHAPES[label % len(SHAPES)]
    hue = (label // len(SHAPES)) / n_hues + rng.normal(0, 0.02)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    gradient = np.linspace(-0.15, 0.15, size, dtype=np.float32)
    img = base + (gradient[:, None, None] * rng.choice([-1, 1])) + np.zeros((size, size, 3), np.float32)
    for _ in range(rng.integers(1, 4)):  # clutter: blobs of random colours
        clutter = _shape_mask("disk", size, *rng.uniform(0, size, 2), rng.uniform(2, 5))
        img[clutter] = rng.uniform(0, 1, 3)
    r = rng.uniform(size * 0.2, size * 0.34)
    mask = _shape_mask(shape, size, *rng.uniform(r, size - r, 2), r)
    img[mask] = _hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def texture_image(label: int, n_classes: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes whose angle and frequency depend on the class, in a class palette, randomly shifted."""
    angle = np.pi * (label / n_classes) + rng.normal(0, 0.08)
    freq = 0.15 + 0.25 * ((label * 7) % n_classes) / n_classes
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (84.0 / size)
    wave = np.sin((np.cos(angle) * x + np.sin(angle) * y) * freq * 2 * np.pi / 2 + rng.uniform(0, 6.3))
    c1 = _hsv_to_rgb((label / n_classes + rng.normal(0, 0.03)) % 1.0, 0.8, 0.9)
    c2 = _hsv_to_rgb((label / n_classes + 0.5) % 1.0, 0.4, rng.uniform(0.2, 0.5))
    t = (wave[:, :, None] + 1) / 2
    img = t * c1 + (1 - t) * c2 + rng.normal(0, 0.08, (size, size, 3))
    return (img.clip(0, 1) * 255).astype(np.uint8)


def land_cover(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(satellite RGB image, class map) from Voronoi regions; class frequencies roughly as DeepGlobe."""
    n_regions = rng.integers(4, 9)
    seeds = rng.uniform(0, size, (n_regions, 2))
    classes = rng.choice(SCORED, n_regions, p=[0.15, 0.4, 0.12, 0.15, 0.08, 0.1])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = 0.06 * size * np.sin(y / size * rng.uniform(4, 9)) * np.sin(x / size * rng.uniform(4, 9))
    dist = (y[None] + warp - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2
    cmap = classes[dist.argmin(0)].astype(np.uint8)
    if rng.random() < 0.3:  # a small patch of "unknown", as in the real data
        cmap[_shape_mask("disk", size, *rng.uniform(0, size, 2), size * 0.05)] = 6
    colours = np.array([[0.55, 0.55, 0.55], [0.75, 0.7, 0.35], [0.6, 0.55, 0.4], [0.15, 0.4, 0.15],
                        [0.1, 0.2, 0.5], [0.85, 0.8, 0.7], [0.0, 0.0, 0.0]], np.float32)
    texture_freq = np.array([0.9, 0.15, 0.4, 0.6, 0.05, 0.25, 0.0], np.float32)
    phase = rng.uniform(0, 6.3)
    stripes = np.sin((x + 0.7 * y) * texture_freq[cmap] + phase) * 0.08
    img = colours[cmap] + stripes[:, :, None] + rng.normal(0, 0.07, (size, size, 3)) + rng.normal(0, 0.04, 3)
    return (img.clip(0, 1) * 255).astype(np.uint8), cmap


def _save(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, quality=92) if path.suffix == ".jpg" else Image.fromarray(img).save(path)


def write_p1(root: Path, sizes: SynthSizes, rng: np.random.Generator) -> None:
    rows = []
    for split, per_class, first_id in (("train_50", sizes.p1_train_per_class, 0),
                                       ("val_50", sizes.p1_val_per_class, 450)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for label in range(sizes.p1_classes):
            for i in range(first_id, first_id + per_class):
                name = f"{label}_{i}.png"
                _save(p1_image(label, sizes.p1_classes, rng), root / split / name)
                if split == "val_50":
                    rows.append((name, label))
    write_csv(root / "val_gt.csv", ["filename", "label"], rows)


def write_p2(root: Path, sizes: SynthSizes, rng: np.random.Generator) -> None:
    mini = root / "mini" / "train"
    mini.mkdir(parents=True, exist_ok=True)
    rows, k = [], 0
    n_mini, n_office = sizes.p2_mini_classes, sizes.p2_office_classes
    for label in range(n_mini):
        wnid = f"n{label:08d}"
        for i in range(sizes.p2_mini_per_class):
            name = f"{wnid}{i:08d}.jpg"
            _save(texture_image(label, n_mini + n_office, rng, 84), mini / name)
            rows.append((k, name, wnid))
            k += 1
    write_csv(root / "mini" / "train.csv", ["id", "filename", "label"], rows)
    office = root / "office"
    for split, per_class in (("train", sizes.p2_office_train_per_class), ("val", sizes.p2_office_val_per_class)):
        (office / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for label in range(n_office):
            for i in range(per_class):
                name = f"{label}_{i}.jpg"
                size = int(rng.integers(64, 121))
                _save(texture_image(n_mini + label, n_mini + n_office, rng, size), office / split / name)
                rows.append((len(rows), name, label))
        order = rng.permutation(len(rows))
        write_csv(office / f"{split}.csv", ["id", "filename", "label"],
                   [(j, rows[o][1], rows[o][2]) for j, o in enumerate(order)])


def validation_tiles(sizes: SynthSizes) -> list[int]:
    """The ids of P3's validation tiles: the first p3_val, and the report's mask-snapshot tiles."""
    return sorted(set(range(sizes.p3_val)) | set(P3_VAL_IDS))


def write_p3(root: Path, sizes: SynthSizes, rng: np.random.Generator) -> None:
    val_ids = validation_tiles(sizes)
    for split, ids in (("train", range(sizes.p3_train)), ("validation", val_ids)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in ids:
            img, cmap = land_cover(rng, sizes.p3_size)
            _save(img, root / split / f"{i:04d}_sat.jpg")
            _save(class_to_rgb(cmap), root / split / f"{i:04d}_mask.png")


def is_synthetic(folder: str | Path) -> bool:
    """Whether a data folder (a problem's data.root or the hw1_data above it) is part of a synthetic tree."""
    folder = Path(folder)
    return any((parent / MARKER).is_file() for parent in (folder, *list(folder.parents)[:1]))


def write_tree(out: str | Path, seed: int = 0, sizes: SynthSizes = SynthSizes(), force: bool = False) -> Path:
    """Writes OUT/hw1_data/{p1_data,p2_data,p3_data} and returns the hw1_data path. The tree is built in a
    temporary folder beside it and renamed into place, so a killed call leaves no half tree; an existing
    OUT/hw1_data that holds files (perhaps the real data) is refused unless `force`."""
    root = Path(out) / "hw1_data"
    if root.is_dir() and any(root.iterdir()) and not force:
        raise DlcvError(f"{root} already holds files; refusing to replace them with synthetic data "
                        "(pick another folder, or --force to replace them)")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".hw1_data.", suffix=".tmp", dir=root.parent))
    except OSError as exc:
        raise DlcvError(f"cannot write to {root.parent}: {exc.strerror}") from None
    try:
        rng = np.random.default_rng(seed)
        write_p1(staging / "p1_data", sizes, np.random.default_rng(rng.integers(1 << 31)))
        write_p2(staging / "p2_data", sizes, np.random.default_rng(rng.integers(1 << 31)))
        write_p3(staging / "p3_data", sizes, np.random.default_rng(rng.integers(1 << 31)))
        (staging / MARKER).write_text(f"Written by dlcv data synth (seed {seed}): synthetic images in the layout of "
                                      "the course's hw1_data, not the course's data.\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
