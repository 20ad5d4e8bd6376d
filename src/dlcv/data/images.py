"""Reading image files robustly, and decoding folders of small images once into a cached uint8 tensor."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from dlcv.errors import DlcvError
from dlcv.fileio import reading, torch_save

log = logging.getLogger("dlcv")


def is_image(path: Path) -> bool:
    """torchvision's ImageFolder rule: a file whose name ends in one of its image extensions (any case)."""
    return has_file_allowed_extension(path.name, IMG_EXTENSIONS) and not path.is_dir()


def list_images(folder: str | Path) -> list[Path]:
    """The image files of one folder (not its subfolders), sorted by name; a missing or empty folder is
    an error."""
    return require_images(sorted(p for p in folder_entries(folder) if is_image(p)), folder)


def refuse_special_input(path: Path, what: str) -> None:
    """An input named like a file that is a device, FIFO or socket: opening a FIFO waits for a writer forever."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise DlcvError(f"{what} {path} is a device, FIFO or socket, not a file; remove it from the folder")


def require_images(files: list[Path], folder: str | Path) -> list[Path]:
    if not files:
        raise DlcvError(f"no .png/.jpg images (nor {', '.join(IMG_EXTENSIONS[3:])}) in {folder}")
    for f in files:
        refuse_special_input(f, "image")
    return files


def images_under(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Every image file under a folder, subfolders included, sorted by path (a flat folder: by name, as
    list_images), and one line for each entry left out: other files, and hidden folders such as
    .ipynb_checkpoints (copies, not data), which torchvision would read."""
    files, skipped = [], []
    for entry in sorted(folder_entries(folder)):
        if entry.is_dir():
            if entry.name.startswith("."):
                skipped.append(f"{entry}: hidden folder, not read")
            else:
                more, more_skipped = images_under(entry)
                files += more
                skipped += more_skipped
        elif is_image(entry):
            files.append(entry)
        else:
            skipped.append(f"{entry}: not an image ({entry.suffix or 'no extension'})")
    return files, skipped


def folder_entries(folder: str | Path) -> list[Path]:
    """The entries of an input folder; a missing or unreadable folder, or a dangling symbolic link in it,
    is an error naming it (a link to nowhere is a lost image, not one to skip silently)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DlcvError(f"image folder not found: {folder}")
    try:
        entries = list(folder.iterdir())
    except PermissionError:
        raise DlcvError(f"cannot read folder {folder}: permission denied") from None
    for p in entries:
        if p.is_symlink() and not p.exists():
            raise DlcvError(f"{p} is a broken symbolic link (its target {os.readlink(p)} does not exist)")
    return entries


_PIL_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    """The largest image (width x height) read: $DLCV_MAX_IMAGE_PIXELS, default PIL's own guard
    (89,478,485, about 9459 x 9459). A small file can declare a huge size (a "decompression bomb")."""
    raw = os.environ.get("DLCV_MAX_IMAGE_PIXELS", str(_PIL_MAX_IMAGE_PIXELS))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise DlcvError(f"DLCV_MAX_IMAGE_PIXELS must be a positive whole number, got {raw!r}")
    return limit


@contextlib.contextmanager
def open_image(path: str | Path, what: str = "image") -> Iterator[Image.Image]:
    """PIL's Image.open, loaded, with every failure (missing, unreadable, corrupt, too large) turned into
    one DlcvError naming the file; the declared size is checked before any pixel is decoded."""
    path = Path(path)
    refuse_special_input(path, what)
    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # PIL's own guard (it raises at twice this) stays on, at our limit
    try:
        with reading(path, what), warnings.catch_warnings():  # PIL warns between 1x and 2x its limit;
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse there instead
            im = Image.open(path)
        with im:
            if im.width * im.height > limit:
                raise DlcvError(f"{what} {path}: declares {im.width}x{im.height} pixels, over the limit of "
                                f"{limit:,} (set DLCV_MAX_IMAGE_PIXELS to allow larger images)")
            im.load()
            yield im
    except Image.DecompressionBombError as exc:
        raise DlcvError(f"{what} {path}: {exc} (set DLCV_MAX_IMAGE_PIXELS to allow larger images)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DlcvError(f"cannot read {what} {path}: {exc} (corrupt or truncated file?)") from None


@contextlib.contextmanager
def open_image_header(path: str | Path) -> Iterator[Image.Image]:
    """An image opened for its size and mode only (no pixel decoded), a read error as one line."""
    try:
        im = Image.open(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DlcvError(f"cannot read image {path}: {exc}") from None
    with im:
        yield im


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Grayscale, palette, RGBA and 16-bit images are converted; unreadable files
    (corrupt, truncated, not an image, too large) raise DlcvError naming the file."""
    with open_image(path) as im:
        return rgb_array(im)


def rgb_array(im: Image.Image) -> np.ndarray:
    """A PIL image as HxWx3 uint8 RGB, as read_rgb converts every file."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's convert("RGB") clips 16-bit values instead of scaling them.
        gray = np.asarray(im, dtype=np.int64)
        gray = (gray >> 8 if gray.max() > 255 else gray).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def resized(img: np.ndarray, size: int | None, resample=Image.BILINEAR) -> np.ndarray:
    """An H x W (x C) uint8 array at size x size (PIL's bilinear, or `resample`); size None: as it is."""
    if size is None or img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), resample))


def decode_image(path: Path, size: int | None) -> np.ndarray:
    """3 x size x size uint8 (size None: the image's own): the one decoding of an image for a model, the
    same bytes whether a split is held in memory or streamed from disk by DataLoader workers."""
    return resized(read_rgb(path), size).transpose(2, 0, 1)


def cache_key(files: Sequence[Path], tag: str) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten, or the decoding (tag) changes. A file's
    size and mtime can stay the same across a rewrite (`cp -p`, `touch -r`, rsync -t, two writes within the
    clock's tick); its inode number and change time (ctime: set by the kernel on every write, rename or
    metadata change, and not settable from user space) cannot, so they are in the key too: content-safe
    for the price of the stat() it already did, where hashing the files would read them all (61 MB for
    P1) on every run. A copied, moved or hard-linked file costs one decode more."""
    h = hashlib.sha256(f"v2:{tag}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    """$DLCV_CACHE, else ~/.cache/dlcv; set but empty counts as not set (as XDG's variables), never as the
    working folder."""
    return Path((os.environ.get("DLCV_CACHE") or "").strip() or Path.home() / ".cache" / "dlcv")


def cached(files: Sequence[Path], tag: str, build, cache_dir: str | Path | None = None, use_cache: bool = True):
    """`build()` (tensors decoded from `files`), memoised on disk under a key of the files and `tag`."""
    cache_dir = Path(cache_dir) if cache_dir and str(cache_dir).strip() else default_cache_dir()
    cache_file = cache_dir / f"{tag.split(':')[0]}-{cache_key(files, tag)}.pt" if use_cache else None
    if cache_file is not None and cache_file.is_file():
        try:
            return torch.load(cache_file, weights_only=True)
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    value = build()
    if cache_file is None:
        return value
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch_save(value, cache_file)
    except (OSError, DlcvError) as exc:  # a read-only or full cache location: work without a cache
        log.warning("image cache not written (%s); the images are decoded again next time", exc)
    return value


def available_memory() -> int | None:
    """Bytes the system can still give (Linux's MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            line = next(line for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def fits_in_memory(nbytes: int) -> bool:
    available = available_memory()
    return available is None or nbytes <= available


def check_fits_in_memory(nbytes: int, what: str, remedy: str) -> None:
    """Refuses, before allocating, data that would not fit in the memory available now (instead of the
    machine swapping or the kernel killing the process)."""
    if not fits_in_memory(nbytes):
        available = available_memory()
        raise DlcvError(f"{what} need {nbytes / 2 ** 30:.1f} GiB of memory, {available / 2 ** 30:.1f} GiB is "
                        f"available; {remedy}")


def load_images(files: Sequence[Path], size: int, cache_dir: str | Path | None = None,
                use_cache: bool = True) -> torch.Tensor:
    """All images as one uint8 tensor N x 3 x size x size, decoded once and cached on disk.

    Small datasets (P1's 20,000 32x32 images are 61 MB) fit in memory; decoding them once and
    augmenting whole batches on the device removes all per-image Python work from training.
    """
    def build():
        check_fits_in_memory(len(files) * 3 * size * size, f"{len(files)} images at {size}x{size} px",
                             "lower data.image_size or set data.limit_train")
        array = np.empty((len(files), 3, size, size), dtype=np.uint8)
        for i, f in enumerate(files):
            array[i] = decode_image(f, size)
        return torch.from_numpy(array)
    return cached(files, f"images:{size}", build, cache_dir, use_cache)
