"""Dataset layouts: the one place that reads a dataset's tree. From a task's data settings it finds the split
folders, decides which layout they hold (or is told: `data.layout`) and hands the task its files, targets
and class names; `dlcv data check` prints the same reading.

classify  course   ROOT/train_50/{label}_{id}.png, one flat folder per split (the course's P1)
          folders  ROOT/train/<class>/**/*.jpg (torchvision's ImageFolder: its class and extension rules)
          csv      ROOT/train/ + ROOT/train.csv (`filename,label` or `id,filename,label`; the course's P2)
segment   course   ROOT/train/xxxx_sat.jpg + xxxx_mask.png in the course's 7 colours (P3)
          pairs    ROOT/train/images/NAME.* + ROOT/train/masks/NAME.png: class-index PNGs, or RGB in the
                   colours of ROOT/classes.csv
ssl       every image under a folder, searched recursively

Split folders left at `auto` are found by name (TRAIN_NAMES, VAL_NAMES); with no validation folder, a seeded
`data.val_fraction` of the training set is held out.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets.folder import find_classes, make_dataset

from dlcv.data import labels as labels_mod
from dlcv.data.images import cached, folder_entries, images_under, is_image, list_images, open_image_header
from dlcv.data.masks import (COURSE, IGNORE, INDEX_MODES, RGB_MODES, MaskClasses, check_class_count, course_tiles,
                             pair_folder)
from dlcv.errors import DlcvError

log = logging.getLogger("dlcv")

AUTO = "auto"
LAYOUTS = {"classify": ("course", "folders", "csv"), "segment": ("course", "pairs")}
# the course problem whose report section a layout's runs belong to; None: a dataset of the user's own
PROBLEMS = {("classify", "course"): "p1", ("classify", "csv"): "p2", ("classify", "folders"): None,
            ("segment", "course"): "p3", ("segment", "pairs"): None, ("ssl", "folder"): "p2"}
# what a layout is, in words (messages)
DESCRIPTIONS = {"course": "a {label}_{id} image folder", "folders": "class folders", "csv": "an id,filename,label CSV",
                "pairs": "image / mask pairs", "folder": "a folder of images"}
TRAIN_NAMES = ("train", "training", "train_50")  # the course's P1 names its splits train_50 / val_50
VAL_NAMES = ("val", "valid", "validation", "val_50")
CLASSES_CSV = "classes.csv"  # segmentation pairs: ROOT/classes.csv

# The data keys of the tasks that read labelled splits (classify, segment); config.COMMON_DEFAULTS has those
# of every task.
SPLIT_DEFAULTS: dict[str, Any] = {"layout": AUTO, "train_dir": AUTO, "val_dir": AUTO, "val_fraction": 0.1,
                                  "limit_val": None}
SPLIT_TYPES = {"data.val_dir": str, "data.limit_val": int}
SPLIT_RANGES = {"data.val_fraction": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
                "data.limit_val": (lambda v: v > 0, "a whole number >= 1 (or null)")}


def layout_choices(task: str) -> dict[str, tuple]:
    return {"data.layout": (AUTO, *LAYOUTS[task])}


def seeded_subset(num_items: int, limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a random subset of `limit` items (all items when limit is None): smoke runs on
    slices of a dataset."""
    if limit is None or limit >= num_items:
        return list(range(num_items))
    return sorted(torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


@dataclass
class Split:
    """A split's items in a fixed order: image files, with their class indices (classification) or their
    mask files and names (segmentation)."""
    folder: Path
    files: list[Path]
    targets: list[int] | None = None
    masks: list[Path] | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def take(self, keep: list[int]) -> Split:
        pick = (lambda items: None if items is None else [items[i] for i in keep])
        return Split(self.folder, pick(self.files), pick(self.targets), pick(self.masks), pick(self.ids))


@dataclass
class Dataset:
    """What a task trains on: its layout, class names (index order), the splits, and every entry of the tree
    left out (one line each). Segmentation also has its mask classes."""
    task: str
    layout: str
    classes: list[str]
    train: Split
    val: Split
    held_out: bool = False  # val is a seeded fraction of the training folder
    skipped: list[str] = field(default_factory=list)
    mask_classes: MaskClasses | None = None

    @property
    def problem(self) -> str | None:
        return PROBLEMS[(self.task, self.layout)]

    def identity(self) -> dict[str, Any]:
        """What a run records of its data (engine.identity compares it on resume; report/runs.py and the
        predict commands read the problem from it instead of guessing)."""
        return {"layout": self.layout, "problem": self.problem}


# -- finding the splits ------------------------------------------------------------------------------------

def data_root(d: dict) -> Path:
    if d["root"] is None:
        raise DlcvError("data.root is not set: the dataset's folder")
    root = Path(d["root"])
    if not root.is_dir():
        raise DlcvError(f"data.root {root}: folder not found")
    return root


def find_split(root: Path, value: str | None, names: tuple[str, ...], what: str, key: str,
               required: bool) -> Path | None:
    """`root / value`, or with `auto` the one folder of `names` under root (None where there is none and the
    split is not required)."""
    if value != AUTO:
        folder = root / value
        if not folder.is_dir():
            raise DlcvError(f"{what} folder not found: {folder} ({key})")
        return folder
    found = [root / n for n in names if (root / n).is_dir()]
    if len(found) > 1:
        raise DlcvError(f"{root} holds {' and '.join(p.name for p in found)}: which is the {what} set? set "
                        f"{key}")
    if not found and required:
        raise DlcvError(f"{root}: no {what} folder (looked for {', '.join(names)}); set {key} to yours")
    return found[0] if found else None


def _csv_beside(root: Path, value: str | None, folder: Path) -> Path | None:
    """A split's CSV: `auto` = FOLDER.csv beside the folder where it exists (office/train + office/train.csv),
    null = none, else the file named (relative to data.root)."""
    if value is None:
        return None
    if value == AUTO:
        beside = folder.parent / f"{folder.name}.csv"
        return beside if beside.is_file() else None
    return labels_mod.resolve_path(root, value)


# -- classification ------------------------------------------------------------------------------------------

@dataclass
class Labelled:
    """A labelled folder as read: its layout, image files and their label strings, entries left out."""
    layout: str
    folder: Path
    files: list[Path]
    labels: list[str]
    skipped: list[str]

    def classes(self) -> list[str]:
        """Class names in index order: torchvision's for class folders (sorted as text, so a model's index
        means what ImageFolder's would), else numerically where every label is a number."""
        return sorted(set(self.labels)) if self.layout == "folders" else labels_mod.sorted_classes(self.labels)


def read_labelled(folder: Path, csv_path: Path | None, layout: str = AUTO) -> Labelled:
    """A labelled folder in any classification layout: `csv` where a CSV is given, `folders` where it holds
    class folders, else `course` (labels from `{label}_{id}` file names)."""
    if layout == AUTO:
        layout = "csv" if csv_path else "folders" if _subfolders(folder) else "course"
    if layout == "csv":
        if csv_path is None:
            raise DlcvError(f"data.layout csv: no CSV for {folder} (looked for {folder}.csv); set data.train_csv / "
                            "data.val_csv")
        return _read_csv(folder, csv_path)
    if layout == "folders":
        return _read_folders(folder)
    files = list_images(folder)
    skipped = [f"{p}: {'folder' if p.is_dir() else 'not an image'}, not read in the course layout "
               "({label}_{id} files in one folder)" for p in sorted(folder_entries(folder)) if not is_image(p)]
    return Labelled("course", folder, files, labels_mod.folder_labels(files), skipped)


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder_entries(folder) if p.is_dir() and not p.name.startswith(".")]


def _read_csv(folder: Path, csv_path: Path) -> Labelled:
    names, labels = labels_mod.read_labelled_csv(csv_path)
    files = labels_mod.files_in(folder, names, csv_path)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DlcvError(f"{csv_path}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    everything, skipped = images_under(folder)
    listed = set(files)
    skipped += [f"{f}: not listed in {csv_path.name}" for f in everything if f not in listed]
    return Labelled("csv", folder, files, labels, skipped)


def _read_folders(folder: Path) -> Labelled:
    """torchvision's ImageFolder rules (find_classes, make_dataset with its image extensions), with every
    file it passes over named, hidden folders (.ipynb_checkpoints) left out, and a class folder without
    images refused (ImageFolder refuses it too)."""
    try:
        found, _ = find_classes(folder)
    except FileNotFoundError:
        raise DlcvError(f"{folder}: no class folders (the folders layout: {folder}/<class>/<images>)") from None
    classes = [c for c in found if not c.startswith(".")]
    skipped = [f"{folder / c}: hidden folder, not read" for c in found if c.startswith(".")]
    skipped += [f"{p}: not in a class folder, not read" for p in sorted(folder_entries(folder)) if not p.is_dir()]
    if not classes:
        raise DlcvError(f"{folder}: no class folders (the folders layout: {folder}/<class>/<images>)")

    def keep(path: str) -> bool:
        p = Path(path)
        if p.is_symlink() and not p.exists():
            raise DlcvError(f"{p} is a broken symbolic link")
        if any(part.startswith(".") for part in p.relative_to(folder).parts[1:-1]):
            return False  # inside a hidden folder of a class
        if not is_image(p):
            skipped.append(f"{p}: not an image ({p.suffix or 'no extension'})")
        return is_image(p)

    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, is_valid_file=keep, allow_empty=True)
    counts = Counter(i for _, i in samples)
    for i, name in enumerate(classes):
        if not counts[i]:
            other = next((line for line in skipped if line.startswith(f"{folder / name}/")), None)
            raise DlcvError(f"{folder / name}: class folder without images"
                            + (f" (e.g. {other.split(': ', 1)[0]} is not one)" if other else " (empty)"))
    return Labelled("folders", folder, [Path(p) for p, _ in samples], [classes[i] for _, i in samples], skipped)


def labelled(root: Path, folder: str, csv_value: str | None, key: str) -> Labelled:
    """A labelled split named by its settings (`key`, for messages): `folder` below root and its CSV (see
    _csv_beside)."""
    path = find_split(root, folder, (), "labelled", key, required=True)
    return read_labelled(path, _csv_beside(root, csv_value, path))


def classification(d: dict, seed: int) -> Dataset:
    """A classify task's data (`d`: its config's data section), limited by data.limit_train / limit_val."""
    root = data_root(d)
    train_dir = find_split(root, d["train_dir"], TRAIN_NAMES, "training", "data.train_dir", required=True)
    train = read_labelled(train_dir, _csv_beside(root, d.get("train_csv"), train_dir), d["layout"])
    classes = train.classes()
    if len(classes) < 2:
        raise DlcvError(f"{train_dir}: the training set has one class ({classes[0]!r}); a classifier needs at least 2")
    train_split = Split(train_dir, train.files, labels_mod.encode(train.labels, classes, str(train_dir)))
    skipped = list(train.skipped)
    val_dir = None if d["val_dir"] is None else \
        find_split(root, d["val_dir"], VAL_NAMES, "validation", "data.val_dir", required=False)
    if val_dir is None:
        train_split, val_split = holdout(train_split, d["val_fraction"], seed)
    else:
        val = read_labelled(val_dir, _csv_beside(root, d.get("val_csv"), val_dir), train.layout)
        val_split = Split(val_dir, val.files, labels_mod.encode(val.labels, classes, str(val_dir)))
        skipped += val.skipped
    return Dataset("classify", train.layout, classes, _limit(train_split, d["limit_train"], seed),
                   _limit(val_split, d["limit_val"], seed), val_dir is None, skipped)


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val): a seeded `fraction` of the split held out for validation."""
    val = seeded_subset(len(split), max(1, round(fraction * len(split))), seed)
    train = sorted(set(range(len(split))) - set(val))
    if not train:
        raise DlcvError(f"{split.folder}: {len(split)} item(s): too few to hold out a validation set")
    return split.take(train), split.take(val)


def _limit(split: Split, limit: int | None, seed: int) -> Split:
    return split.take(seeded_subset(len(split), limit, seed))


def labelled_folder(folder: Path) -> Labelled | None:
    """A folder's images with their true labels where it is a labelled split in any classification layout
    (FOLDER.csv beside it, class folders, `{label}_{id}` names), else None: what `eval acc` and `classify
    embed` know of a folder."""
    try:
        return read_labelled(folder, _csv_beside(folder.parent, AUTO, folder))
    except DlcvError:
        return None


def relative_names(folder: Path, files: list[Path]) -> list[str]:
    """The file names predictions are written under: the path below `folder` (a flat folder: the name)."""
    return [f.relative_to(folder).as_posix() for f in files]


# -- segmentation --------------------------------------------------------------------------------------------

def segmentation(d: dict, seed: int, keep_ids: tuple[str, ...] = ()) -> Dataset:
    """A segment task's data; `keep_ids`: tiles a limited validation set keeps (the snapshot tiles)."""
    root = data_root(d)
    train_dir = find_split(root, d["train_dir"], TRAIN_NAMES, "training", "data.train_dir", required=True)
    layout = _segment_layout(train_dir) if d["layout"] == AUTO else d["layout"]
    val_dir = None if d["val_dir"] is None else \
        find_split(root, d["val_dir"], VAL_NAMES, "validation", "data.val_dir", required=False)
    read = _course_tiles if layout == "course" else _pairs
    (train, skipped), (val, val_skipped) = read(train_dir), read(val_dir) if val_dir else (None, [])
    table = COURSE if layout == "course" else pairs_classes(root, [train, val], d["ignore_index"])
    if val is None:
        train, val = holdout(train, d["val_fraction"], seed)
    train = _limit(train, d["limit_train"], seed)
    keep = seeded_subset(len(val), d["limit_val"], seed)
    val = val.take(sorted(set(keep) | {i for i, ident in enumerate(val.ids) if ident in keep_ids}))
    if layout == "pairs":
        check_pairs(train, table, d["image_size"])
        check_pairs(val, table, d["image_size"])
    return Dataset("segment", layout, list(table.names), train, val, val_dir is None, skipped + val_skipped, table)


def _segment_layout(folder: Path) -> str:
    if course_tiles(folder):
        return "course"
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return "pairs"
    raise DlcvError(f"{folder} holds neither xxxx_sat.jpg + xxxx_mask.png pairs (the course layout) nor images/ and "
                    "masks/ folders (the pairs layout)")


def _course_tiles(folder: Path) -> tuple[Split, list[str]]:
    pairs = pair_folder(folder)
    return Split(folder, [s for _, s, _ in pairs], masks=[m for _, _, m in pairs], ids=[i for i, _, _ in pairs]), []


def _pairs(folder: Path) -> tuple[Split, list[str]]:
    """images/NAME.* with masks/NAME.png: an image without its mask, a mask without its image, or two images
    of one NAME is an error naming the file."""
    images, masks_dir = folder / "images", folder / "masks"
    for sub in (images, masks_dir):
        if not sub.is_dir():
            raise DlcvError(f"{folder}: no {sub.name}/ folder (the pairs layout: images/NAME.* + masks/NAME.png)")
    files = list_images(images)
    by_name: dict[str, Path] = {}
    for f in files:
        if f.stem in by_name:
            raise DlcvError(f"{f} and {by_name[f.stem]}: two images named {f.stem!r}; each needs its own mask")
        by_name[f.stem] = f
    skipped = [f"{p}: not an image, not read" for p in sorted(folder_entries(images)) if not is_image(p)]
    masks = {p.stem: p for p in folder_entries(masks_dir) if p.suffix.lower() == ".png" and not p.is_dir()}
    skipped += [f"{p}: not a .png mask, not read" for p in sorted(folder_entries(masks_dir)) if p.stem not in masks
                or masks[p.stem] != p]
    for name, image in by_name.items():
        if name not in masks:
            raise DlcvError(f"{image} has no mask {masks_dir / (name + '.png')}")
    for name in sorted(set(masks) - set(by_name)):
        raise DlcvError(f"{masks[name]} has no image {images / name}.* (any image type)")
    return Split(folder, files, masks=[masks[f.stem] for f in files], ids=[f.stem for f in files]), skipped


def _mask_kind(path: Path) -> str:
    with open_image_header(path) as im:
        if im.mode in INDEX_MODES:
            return "index"
        if im.mode in RGB_MODES:
            return "rgb"
    raise DlcvError(f"mask {path}: mode {im.mode}; masks are class-index PNGs (grayscale or palette) or RGB "
                    "with classes.csv")


def pairs_classes(root: Path, splits: list[Split | None], ignore_value: int | None) -> MaskClasses:
    """The classes of a pairs dataset: ROOT/classes.csv where it exists (RGB masks need it), else the class
    indices 0..N-1 found in the training masks (N = the largest + 1; the ignore value is no class)."""
    first = splits[0].masks[0]
    rgb = _mask_kind(first) == "rgb"
    listed = root / CLASSES_CSV
    if listed.is_file():
        return MaskClasses.from_csv(listed, rgb, ignore_value)
    if rgb:
        raise DlcvError(f"mask {first} is RGB: list its classes and colours in {listed} (name,r,g,b; a row named "
                        "ignore for pixels of no class), or write masks of class indices")
    raw = MaskClasses(tuple(str(i) for i in range(256)), ignore_value=None)  # the values as they are
    histogram = mask_histograms(splits[0], raw).sum(0)
    if ignore_value is not None:
        histogram[ignore_value] = 0
    count = int(np.flatnonzero(histogram).max()) + 1 if histogram.any() else 0
    hint = " (binary masks of 0 and 255? write the foreground as 1)" if count == 1 and ignore_value == 255 else ""
    check_class_count(count, f"the training masks in {splits[0].folder / 'masks'}{hint}")
    return MaskClasses(tuple(str(i) for i in range(count)), ignore_value=ignore_value)


def mask_histograms(split: Split, table: MaskClasses) -> np.ndarray:
    """N x 256 pixel counts of each mask's class map (IGNORE: pixels of no class), every mask read (and so
    checked) once; cached on disk like decoded images."""
    def build():
        out = np.zeros((len(split), 256), np.int64)
        for i, mask in enumerate(split.masks):
            out[i] = np.bincount(table.read(mask, IGNORE)[0].ravel(), minlength=256)
        return torch.from_numpy(out)
    tag = "maskscan:" + json.dumps(table.record(), sort_keys=True)
    return cached(split.masks, tag, build).numpy()


def check_pairs(split: Split, table: MaskClasses, image_size: int | None) -> None:
    """Before training: every mask has its image's size and only the table's values, and the tiles share one
    size unless data.image_size resizes them; each refused file is named."""
    sizes = {}
    for image, mask in zip(split.files, split.masks):
        with open_image_header(image) as a, open_image_header(mask) as b:
            if a.size != b.size:
                raise DlcvError(f"mask {mask} is {b.width}x{b.height}, its image {image.name} is {a.width}x{a.height}")
            sizes.setdefault(a.size, image)
    if len(sizes) > 1 and image_size is None:
        (size_a, a), (size_b, b) = list(sizes.items())[:2]
        raise DlcvError(f"images of different sizes ({a} is {size_a[0]}x{size_a[1]}, {b} is {size_b[0]}x{size_b[1]}): "
                        "set data.image_size=N to resize every image and mask to N x N")
    mask_histograms(split, table)  # reads every mask: a value or colour of no class is refused, naming it


# -- self-supervised -----------------------------------------------------------------------------------------

def unlabeled(d: dict, seed: int) -> tuple[list[Path], list[str]]:
    """Every image under data.root / data.unlabeled_dir (searched recursively), limited by data.limit_train;
    and the entries left out."""
    folder = data_root(d) / d["unlabeled_dir"]
    files, skipped = images_under(folder)
    if not files:
        raise DlcvError(f"no images under {folder} (searched recursively)")
    return [files[i] for i in seeded_subset(len(files), d["limit_train"], seed)], skipped


# -- dlcv data check -----------------------------------------------------------------------------------------

def guess_task(root: Path) -> str:
    """segment where the training folder holds tiles and masks, classify where it holds another layout, ssl
    where there is no training folder (a plain folder of images)."""
    try:
        train = find_split(root, AUTO, TRAIN_NAMES, "training", "data.train_dir", required=False)
    except DlcvError:
        return "classify"
    if train is None:
        return "ssl"
    try:
        _segment_layout(train)
        return "segment"
    except DlcvError:
        return "classify"


def describe(task: str, d: dict) -> list[str]:
    """`dlcv data check`: what the task would read under d["root"], one line per fact and per entry left
    out; a tree the task cannot use raises DlcvError naming the first file or class refused."""
    root = data_root(d)
    if task == "ssl":
        files, skipped = unlabeled(d, seed=0)
        return [f"{root}: ssl, every image under {root / d['unlabeled_dir']} (searched recursively)",
                f"images: {len(files)}", _sizes_line(files), *_skipped_lines(skipped)]
    data = classification(d, 0) if task == "classify" else segmentation(d, 0)
    problem = data.problem.upper() if data.problem else "a dataset of your own"
    lines = [f"{root}: {task}, layout {data.layout} ({problem})"]
    what = "images" if task == "classify" else "image/mask pairs"
    for name, split in (("train", data.train), ("val", data.val)):
        where = f"a seeded {d['val_fraction']:.0%} of {split.folder} held out" if name == "val" and data.held_out \
            else str(split.folder)
        lines.append(f"{name}: {where}, {len(split)} {what}")
        if task == "classify":
            counts = Counter(split.targets)
            lines += [f"  {c}: {counts[i]}" for i, c in enumerate(data.classes)]
    if task == "segment":
        lines.append("classes (share of the pixels of train / val):")
        pixels = [mask_histograms(s, data.mask_classes).sum(0) for s in (data.train, data.val)]
        shares = [p / max(p.sum(), 1) for p in pixels]
        for c, name in enumerate(data.classes):
            lines.append(f"  {c} {name}: {shares[0][c]:.2%} / {shares[1][c]:.2%}")
        if pixels[0][IGNORE] or pixels[1][IGNORE]:
            what = "pure red: ignored in training, scored as unknown" if data.mask_classes.course else "ignored"
            lines.append(f"  no class ({what}): {pixels[0][IGNORE]:,} / {pixels[1][IGNORE]:,} pixels")
    lines.append(_sizes_line(data.train.files + data.val.files))
    return lines + _skipped_lines(data.skipped)


def _sizes_line(files: list[Path], shown: int = 5) -> str:
    sizes = Counter()
    for f in files:
        with open_image_header(f) as im:
            sizes[im.size] += 1
    common = [f"{w}x{h}: {n}" for (w, h), n in sizes.most_common(shown)]
    more = f", and {len(sizes) - shown} other sizes" if len(sizes) > shown else ""
    return "image sizes: " + ", ".join(common) + more


def _skipped_lines(skipped: list[str]) -> list[str]:
    return [f"skipped: {line}" for line in skipped] or ["skipped: nothing"]
