"""Segmentation masks in the course palette (SPEC 2): colour <-> class, pairing and reading files."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from dlcv.data.images import folder_entries, open_image, refuse_special_input
from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path, refuse_special_file

log = logging.getLogger("dlcv")

CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
NUM_CLASSES = len(CLASS_NAMES)
UNKNOWN = CLASS_NAMES.index("unknown")
SCORED = UNKNOWN  # classes 0..5 are averaged in mIoU; unknown is not, but its pixels still count as FP / FN
IGNORE = 255  # training target value of pixels that are no class (pure red)
PALETTE = np.array([(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
                    (0, 0, 0)], dtype=np.uint8)
RED = -1
# code = 4R + 2G + B after thresholding each channel at >= 128 -> class; code 4 (red) -> RED
CODE_TO_CLASS = np.array([6, 4, 3, 0, RED, 2, 1, 5], dtype=np.int8)


def rgb_to_class(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W int8 class map; RED (-1) where the pixel is pure red (code 4), which is
    no class of the course: callers decide (and report) how to treat it."""
    bits = (rgb >= 128).astype(np.uint8)
    return CODE_TO_CLASS[4 * bits[..., 0] + 2 * bits[..., 1] + bits[..., 2]]


def class_to_rgb(classes: np.ndarray) -> np.ndarray:
    return PALETTE[classes]


def read_mask(path: str | Path, red_as: int) -> tuple[np.ndarray, int]:
    """(H x W uint8 class map, number of red pixels), red pixels set to `red_as`: IGNORE for training
    targets, UNKNOWN for scoring (a red pixel predicted as class c then counts against c)."""
    with open_image(path, "mask") as im:
        if im.mode not in ("RGB", "RGBA", "P"):
            raise DlcvError(f"mask {path}: mode {im.mode}, expected an RGB image in the course palette")
        rgb = np.asarray(im.convert("RGB"))
    classes = rgb_to_class(rgb)
    red = classes == RED
    out = classes.astype(np.uint8)
    out[red] = red_as
    return out, int(red.sum())


# a PNG text chunk in every mask dlcv predicts (invisible to the course's evaluator, which reads pixels): an
# existing mask is replaced by a prediction only when it carries it, so ground truth never is
PREDICTION_MARK = ("Software", "dlcv segment predict")


def write_mask(path: str | Path, classes: np.ndarray) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(*PREDICTION_MARK)
    with atomic_path(path) as tmp:
        Image.fromarray(class_to_rgb(classes)).save(tmp, format="PNG", pnginfo=info)


def check_prediction_targets(out_dir: str | Path, sats: list[Path], what: str) -> None:
    """Before predicting: each mask the tiles `sats` give in `out_dir` is new or an earlier prediction
    (PREDICTION_MARK), never ground truth or another file, and not a device, FIFO or socket."""
    for sat in sats:
        target = Path(out_dir) / mask_name(sat)
        refuse_special_file(target, what)
        if (target.exists() or target.is_symlink()) and not _is_prediction(target):
            raise DlcvError(f"{what} {out_dir} holds {target.name}, which dlcv segment predict did not write "
                            "(ground truth?): it would be overwritten; pick another output folder")


def _is_prediction(path: Path) -> bool:
    try:
        with Image.open(path) as im:  # the header and text chunks only; no pixel is decoded
            return im.info.get(PREDICTION_MARK[0]) == PREDICTION_MARK[1]
    except (OSError, ValueError, SyntaxError):
        return False


SAT_SUFFIXES = ("_sat.jpg", "_sat.jpeg")
MASK_SUFFIX = "_mask.png"


def _by_id(entries: list[Path], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{id: file} for the files whose name ends in one of the suffixes, letter case ignored
    (`0001_SAT.JPG` is `0001`); folders named like images are skipped."""
    found = {}
    for p in entries:
        lower = p.name.lower()
        suffix = next((s for s in suffixes if lower.endswith(s)), None)
        if suffix is not None and not p.is_dir():
            refuse_special_input(p, "image" if suffix in SAT_SUFFIXES else "mask")
            found[p.name[:-len(suffix)]] = p
    return found


def mask_name(sat: Path) -> str:
    """`xxxx_sat.jpg` (any case, .jpeg too) -> `xxxx_mask.png`."""
    return next(iter(_by_id([sat], SAT_SUFFIXES))) + MASK_SUFFIX


def pair_folder(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(id, sat, mask) for every `xxxx_sat.jpg` + `xxxx_mask.png` of a folder, sorted by id; a sat
    image without its mask, or the reverse, is an error naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DlcvError(f"segmentation folder not found: {folder}")
    entries = folder_entries(folder)
    sats, masks = _by_id(entries, SAT_SUFFIXES), _by_id(entries, (MASK_SUFFIX,))
    if not sats and not masks:
        raise DlcvError(f"no xxxx_sat.jpg / xxxx_mask.png pairs in {folder}")
    for ident in sorted(set(sats) ^ set(masks)):
        lonely = sats.get(ident) or masks.get(ident)
        other = "mask" if ident in sats else "satellite image"
        raise DlcvError(f"{lonely} has no matching {other} in {folder}")
    return [(i, sats[i], masks[i]) for i in sorted(sats)]


def warn_if_pairs_differ(gt_dir: str | Path, pred_dir: str | Path) -> None:
    """`segment miou` pairs the `.png` files of the two folders in sorted order, as the course's evaluator;
    pairs whose names differ (a renamed or missing file shifts every pair after it) are warned about."""
    gt, pred = sorted(Path(gt_dir).glob("*.png")), sorted(Path(pred_dir).glob("*.png"))
    differ = [(g.name, p.name) for g, p in zip(gt, pred) if g.name != p.name]
    if differ:
        log.warning("segment miou pairs masks in sorted order, as the course's evaluator: %d pair(s) have different "
                    "names, first %s with %s (a renamed or missing file?)", len(differ), *differ[0])


def sat_images(folder: str | Path) -> list[Path]:
    """The `xxxx_sat.jpg` files of a folder (for prediction; `.JPG`, `.jpeg` too), sorted by name."""
    files = sorted(_by_id(folder_entries(folder), SAT_SUFFIXES).values())
    if not files:
        raise DlcvError(f"no xxxx_sat.jpg images in {folder}")
    return files
