"""Reading image files robustly, and decoding folders of small images once into a cached uint8 tensor."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: str | Path) -> list[Path]:
    """Image files (png/jpg) of a folder, sorted by name; a missing or empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DlcvError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DlcvError(f"no .png/.jpg images in {folder}")
    return files


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Grayscale, palette, RGBA and 16-bit images are converted; unreadable files
    (corrupt, truncated, not an image) raise DlcvError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # PIL's convert("RGB") clips 16-bit values instead of scaling them.
                gray = np.asarray(im, dtype=np.int64)
                gray = (gray >> 8 if gray.max() > 255 else gray).clip(0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA").convert("RGB")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DlcvError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DlcvError(f"cannot read image {path}: {exc} (corrupt or truncated file?)") from None


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def cache_key(files: Sequence[Path], tag: str) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten, or the decoding (tag) changes."""
    h = hashlib.sha256(f"v1:{tag}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DLCV_CACHE", Path.home() / ".cache" / "dlcv"))


def cached(files: Sequence[Path], tag: str, build, cache_dir: str | Path | None = None, use_cache: bool = True):
    """`build()` (tensors decoded from `files`), memoised on disk under a key of the files and `tag`."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
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
        with atomic_path(cache_file) as tmp:
            torch.save(value, tmp)
    except OSError:  # read-only cache location: work without a cache
        pass
    return value


def load_images(files: Sequence[Path], size: int, cache_dir: str | Path | None = None,
                use_cache: bool = True) -> torch.Tensor:
    """All images as one uint8 tensor N x 3 x size x size, decoded once and cached on disk.

    Small datasets (P1's 20,000 32x32 images are 61 MB) fit in memory; decoding them once and
    augmenting whole batches on the device removes all per-image Python work from training.
    """
    def build():
        array = np.empty((len(files), 3, size, size), dtype=np.uint8)
        for i, f in enumerate(files):
            array[i] = _resize(read_rgb(f), size).transpose(2, 0, 1)
        return torch.from_numpy(array)
    return cached(files, f"images:{size}", build, cache_dir, use_cache)
