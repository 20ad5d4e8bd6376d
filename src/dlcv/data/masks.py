"""Segmentation masks: what their pixels mean (MaskClasses: the course's 7-colour palette, or a dataset's own
classes as index PNGs or RGB colours listed in classes.csv), reading and writing them, and the course's
tile / mask pairing."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from dlcv.data.images import folder_entries, open_image, refuse_special_input
from dlcv.data.labels import read_csv_rows
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


INDEX_MODES = ("L", "P", "1")  # masks whose pixel values are class indices (grayscale, palette, binary)
RGB_MODES = ("RGB", "RGBA")
IGNORE_ROW = "ignore"  # the classes.csv row (name) whose colour marks pixels of no class
MAX_CLASSES = 255  # class indices 0..254 in a uint8 map; 255 is IGNORE


@dataclass(frozen=True)
class MaskClasses:
    """What a dataset's mask pixels mean. The course's (`COURSE`): 7 colours read by thresholding, pure red
    no class, mIoU over 6 classes with unknown counted as FP / FN (SPEC 3). A dataset's own: class `names`
    in index order, masks as index PNGs (pixel value = class, `ignore_value` = no class) or, with `colours`
    and `rgb`, as RGB images in exactly those colours (`ignore_colour` = no class); mIoU is the mean IoU of
    the classes present (metrics.mean_iou), pixels of no class left out."""
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None = None  # a colour per class: RGB masks, figures
    rgb: bool = False  # masks are RGB in `colours` (else class-index images)
    ignore_colour: tuple[int, int, int] | None = None
    ignore_value: int | None = IGNORE
    course: bool = False

    @property
    def scored(self) -> int:
        """Classes 0..scored-1 are averaged in mIoU (the course leaves out unknown, its last)."""
        return SCORED if self.course else len(self.names)

    def read(self, path: str | Path, red_as: int = UNKNOWN) -> tuple[np.ndarray, int]:
        """(H x W uint8 class map, pixels of no class), which are IGNORE in the map (the course's pure red:
        `red_as`). A pixel that is no class of the table is an error naming the file."""
        if self.course:
            return read_mask(path, red_as)
        with open_image(path, "mask") as im:
            if self.rgb:
                if im.mode not in RGB_MODES:
                    raise DlcvError(f"mask {path}: mode {im.mode}, expected an RGB image in the colours of "
                                    "classes.csv (the other masks are)")
                return self._from_rgb(np.asarray(im.convert("RGB")), path)
            if im.mode not in INDEX_MODES:
                raise DlcvError(f"mask {path}: mode {im.mode}, expected a class-index image (grayscale or "
                                "palette PNG; the other masks are)")
            values = np.asarray(im, dtype=np.uint8)
        ignored = values == self.ignore_value if self.ignore_value is not None else np.zeros(values.shape, bool)
        outside = (values >= len(self.names)) & ~ignored
        if outside.any():
            none = "" if self.ignore_value is None else f", {self.ignore_value} is no class"
            raise DlcvError(f"mask {path}: value {int(values[outside][0])} is not a class (the classes are 0.."
                            f"{len(self.names) - 1}{none})")
        out = values.copy()
        out[ignored] = IGNORE
        return out, int(ignored.sum())

    def _from_rgb(self, rgb: np.ndarray, path) -> tuple[np.ndarray, int]:
        codes = _colour_codes(rgb)
        table = _colour_codes(np.array(self.colours, np.uint8))
        order = np.argsort(table)
        at = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
        found = table[order][at] == codes
        ignored = codes == _colour_codes(np.array(self.ignore_colour, np.uint8)) if self.ignore_colour \
            else np.zeros(codes.shape, bool)
        stray = ~found & ~ignored
        if stray.any():
            y, x = np.argwhere(stray)[0]
            raise DlcvError(f"mask {path}: colour {tuple(int(v) for v in rgb[y, x])} at ({x}, {y}) is no class of "
                            "classes.csv")
        out = order[at].astype(np.uint8)
        out[ignored] = IGNORE
        return out, int(ignored.sum())

    def image(self, classes: np.ndarray) -> Image.Image:
        """The mask file's picture of a class map: the course's palette, the classes.csv colours, or the
        class indices (the form the dataset's masks take)."""
        if self.course or self.rgb:
            return Image.fromarray(self.to_rgb(classes))
        return Image.fromarray(classes.astype(np.uint8))

    def to_rgb(self, classes: np.ndarray) -> np.ndarray:
        """H x W x 3 colours for figures: the dataset's colours, else a fixed palette (matplotlib's tab20)."""
        if self.course:
            return class_to_rgb(classes)
        palette = np.array(self.colours, np.uint8) if self.colours else _display_palette(len(self.names))
        return np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])[classes]

    def record(self) -> dict[str, Any]:
        """Plain values for a checkpoint and for the masks predict writes (from_record reads it back)."""
        return {"names": list(self.names), "colours": [list(c) for c in self.colours] if self.colours else None,
                "rgb": self.rgb, "ignore_colour": list(self.ignore_colour) if self.ignore_colour else None,
                "ignore_value": self.ignore_value, "course": self.course}

    @classmethod
    def from_record(cls, record: Any, where: str) -> MaskClasses:
        try:
            table = cls(tuple(record["names"]), _colour_tuple(record["colours"]), bool(record["rgb"]),
                        _colour_tuple([record["ignore_colour"]])[0] if record["ignore_colour"] else None,
                        record["ignore_value"], bool(record["course"]))
        except (KeyError, TypeError, ValueError):
            raise DlcvError(f"{where}: its mask classes record is damaged") from None
        if table.course:
            return COURSE
        if not 2 <= len(table.names) <= MAX_CLASSES or not all(isinstance(n, str) and n for n in table.names):
            raise DlcvError(f"{where}: its mask classes record is damaged (class names {table.names[:5]})")
        return table

    @classmethod
    def from_csv(cls, path: Path, rgb: bool, ignore_value: int | None) -> MaskClasses:
        """classes.csv: `name,r,g,b`, one row per class in index order; a row named `ignore` gives the colour
        of pixels that are no class. A repeated name or colour is an error naming its line."""
        rows = read_csv_rows(path, ("name", "r", "g", "b"))
        names, colours, ignore, seen = [], [], None, {}
        for line, row in enumerate(rows, start=2):
            try:
                colour = tuple(int(row[k]) for k in "rgb")
            except ValueError:
                colour = (-1,)
            if not all(0 <= v <= 255 for v in colour):
                raise DlcvError(f"{path}, line {line}: r, g, b must be whole numbers 0..255, got "
                                f"{row['r']},{row['g']},{row['b']}")
            if not row["name"]:
                raise DlcvError(f"{path}, line {line}: empty class name")
            if colour in seen:
                raise DlcvError(f"{path}, line {line}: colour {colour} repeats line {seen[colour]} (each class, "
                                "and the ignore row, needs its own colour)")
            seen[colour] = line
            if row["name"] == IGNORE_ROW:
                ignore = colour
                continue
            if row["name"] in names:
                raise DlcvError(f"{path}, line {line}: class {row['name']!r} is listed twice")
            names.append(row["name"])
            colours.append(colour)
        check_class_count(len(names), str(path))
        return cls(tuple(names), tuple(colours), rgb, ignore, ignore_value)


def check_class_count(count: int, where: str) -> None:
    if not 2 <= count <= MAX_CLASSES:
        raise DlcvError(f"{where}: {count} class(es); a segmentation dataset needs 2 to {MAX_CLASSES}")


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_tuple(colours) -> tuple[tuple[int, int, int], ...] | None:
    if colours is None:
        return None
    out = tuple(tuple(int(v) for v in c) for c in colours)
    if not all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in out):
        raise ValueError("not RGB colours")
    return out


def _display_palette(n: int) -> np.ndarray:
    from matplotlib import colormaps
    return (np.array([colormaps["tab20"](i % 20)[:3] for i in range(n)]) * 255).round().astype(np.uint8)


COURSE = MaskClasses(CLASS_NAMES, tuple(map(tuple, PALETTE.tolist())), rgb=True, course=True)

# a PNG text chunk in every mask dlcv predicts (invisible to the course's evaluator, which reads pixels): an
# existing mask is replaced by a prediction only when it carries it, so ground truth never is
PREDICTION_MARK = ("Software", "dlcv segment predict")
# and, in the masks of a model of a dataset's own classes, the class table (`segment miou` scores with it)
CLASSES_KEY = "dlcv classes"


def write_mask(path: str | Path, classes: np.ndarray, table: MaskClasses = None) -> None:
    table = table or COURSE
    info = PngImagePlugin.PngInfo()
    info.add_text(*PREDICTION_MARK)
    if not table.course:
        info.add_text(CLASSES_KEY, json.dumps(table.record()))
    with atomic_path(path) as tmp:
        table.image(classes).save(tmp, format="PNG", pnginfo=info)


def classes_of_prediction(path: Path) -> MaskClasses | None:
    """The class table a predicted mask carries (None: a course mask, or not written by dlcv)."""
    try:
        with Image.open(path) as im:  # header and text chunks only
            text = im.info.get(CLASSES_KEY)
    except (OSError, ValueError, SyntaxError):
        return None
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise DlcvError(f"{path}: its '{CLASSES_KEY}' record is not valid JSON") from None
    return MaskClasses.from_record(record, str(path))


def check_prediction_targets(out_dir: str | Path, sats: list[Path], what: str) -> None:
    """check_prediction_files for the masks the course's tiles `sats` give."""
    check_prediction_files(out_dir, [mask_name(sat) for sat in sats], what)


def check_prediction_files(out_dir: str | Path, names: list[str], what: str) -> None:
    """Before predicting: each mask `names` will write in `out_dir` is new or an earlier prediction
    (PREDICTION_MARK), never ground truth or another file, and not a device, FIFO or socket."""
    for name in names:
        target = Path(out_dir) / name
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


def course_tiles(folder: str | Path) -> list[Path]:
    """The `xxxx_sat.jpg` files of a folder (`.JPG`, `.jpeg` too), sorted by name; maybe none."""
    return sorted(_by_id(folder_entries(folder), SAT_SUFFIXES).values())


def sat_images(folder: str | Path) -> list[Path]:
    """The `xxxx_sat.jpg` files of a folder (for prediction), sorted by name; none is an error."""
    files = course_tiles(folder)
    if not files:
        raise DlcvError(f"no xxxx_sat.jpg images in {folder}")
    return files
