"""A split's decoded items as uint8 batches on the device: held in memory (decoded once, cached on disk), or
streamed from disk, decoded and resized in DataLoader workers into pinned memory. Both decode with the same
functions (data/images.decode_image, Tiles), so a batch is the same bytes either way.

The training loop draws the batches (engine/batches.py: the same on any number of processes, from the seed
and the epoch). A streamed split is told them before the epoch (`plan`), so its workers decode exactly those
index batches, in that order, while the model trains; `batch` then hands each one over, checked against the
indices the loop asks for. With `data.in_memory: auto` a split is held in memory where the decoded split
fits the memory available now (on a GPU: half of its free memory), else streamed, with one log line.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dlcv.data.images import (cached, check_fits_in_memory, decode_image, fits_in_memory, load_images, open_image_header,
                              read_rgb, resized)
from dlcv.data.masks import MaskClasses
from dlcv.errors import DlcvError

log = logging.getLogger("dlcv")

MAX_WORKERS = 8


class Images:
    """Item i: image i as 3 x size x size uint8."""

    def __init__(self, files: Sequence[Path], size: int):
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, i: int) -> tuple[np.ndarray, ...]:
        return (decode_image(self.files[i], self.size),)

    def nbytes(self) -> int:
        return len(self) * 3 * self.size ** 2

    def in_memory(self, cache_dir: str | None) -> tuple[torch.Tensor, ...]:
        return (load_images(self.files, self.size, cache_dir),)


class Tiles:
    """Item i: image i (3 x H x W) and its mask's class map (H x W; pixels of no class: IGNORE, the course's
    pure red: `red_as`), uint8; `size` resizes both (the mask by nearest neighbour), None keeps them."""

    def __init__(self, files: Sequence[Path], masks: Sequence[Path], table: MaskClasses, red_as: int,
                 size: int | None, what: str):
        self.files, self.masks, self.table, self.red_as, self.size, self.what = list(files), list(masks), table, \
            red_as, size, what

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, i: int) -> tuple[np.ndarray, ...]:
        image, mask, _ = self.counted(i)
        return image, mask

    def counted(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(image, mask, pixels of no class)"""
        from PIL import Image
        img, (mask, ignored) = read_rgb(self.files[i]), self.table.read(self.masks[i], self.red_as)
        if mask.shape != img.shape[:2]:
            raise DlcvError(f"{self.masks[i]}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                            f"its image {self.files[i].name} is {img.shape[1]}x{img.shape[0]}")
        return resized(img, self.size).transpose(2, 0, 1), resized(mask, self.size, Image.NEAREST), ignored

    def nbytes(self) -> int:
        if self.size is not None:
            return len(self) * 4 * self.size ** 2
        with open_image_header(self.files[0]) as im:
            return len(self) * 4 * im.width * im.height

    def in_memory(self, cache_dir: str | None) -> tuple[torch.Tensor, ...]:
        files = [p for pair in zip(self.files, self.masks) for p in pair]
        tag = f"segment:{self.red_as}"
        if not self.table.course or self.size is not None:
            tag += f":{self.size}:{sorted(self.table.record().items())}"
        data = cached(files, tag, self._decode_all, cache_dir)
        self.ignored = int(data["red"])
        return data["images"], data["masks"]

    def _decode_all(self) -> dict[str, torch.Tensor]:
        """Images N x 3 x H x W and masks N x H x W (uint8); all tiles of a split must share one size."""
        first = self.counted(0)
        n, (h, w) = len(self), first[1].shape
        check_fits_in_memory(n * 4 * h * w, f"{n} {self.what} tiles of {w}x{h} px (image and mask)",
                             f"set data.limit_{'train' if self.what == 'train' else 'val'} or data.in_memory=false")
        images, masks = np.empty((n, 3, h, w), np.uint8), np.empty((n, h, w), np.uint8)
        ignored = 0
        for i in range(n):
            image, mask, count = first if i == 0 else self.counted(i)
            if image.shape[1:] != (h, w):
                raise DlcvError(f"{self.files[i]}: {image.shape[2]}x{image.shape[1]}, but the {self.what} tiles are "
                                f"{w}x{h} (set data.image_size to resize them to one size)")
            images[i], masks[i] = image, mask
            ignored += count
        return {"images": torch.from_numpy(images), "masks": torch.from_numpy(masks), "red": torch.tensor(ignored)}


def default_workers() -> int:
    """DataLoader workers per process: the cores this process may use, shared among torchrun's local
    processes, at most MAX_WORKERS."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) // max(1, local)))


def _fits_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2  # the rest is the model's, its activations' and the optimizer's


class Source:
    """A split's items (`decoder`: Images or Tiles) as uint8 tensors on `device`, by index. `in_memory`:
    True, False or "auto" (data.in_memory); `workers`: DataLoader workers of a streamed split (None: as
    many as default_workers)."""

    def __init__(self, decoder, device: torch.device, in_memory: bool | str = "auto", workers: int | None = None,
                 cache_dir: str | None = None, what: str = "split"):
        self.decoder, self.device = decoder, device
        self.workers = default_workers() if workers is None else workers
        if in_memory == "auto":
            nbytes = decoder.nbytes()
            in_memory = fits_in_memory(nbytes) and _fits_device(nbytes, device)
            if not in_memory:
                log.info("%s: %d items, %.1f GiB decoded, do not fit in memory; streaming them from disk (%d "
                         "DataLoader workers)", what, len(decoder), nbytes / 2 ** 30, self.workers)
        self.in_memory = bool(in_memory)
        self.tensors = tuple(t.to(device) for t in decoder.in_memory(cache_dir)) if self.in_memory else None
        self._planned: Iterator | None = None

    def __len__(self) -> int:
        return len(self.decoder)

    def __getitem__(self, indices: torch.Tensor):
        """The items at `indices` (a 1-D tensor), decoded now where the split streams: a tensor for one-part
        items (images), else a tuple (images, masks)."""
        if self.in_memory:
            idx = indices.to(self.device)
            return _one(tuple(t[idx] for t in self.tensors))
        return self._to_device(_collate([self.decoder(i) for i in indices.tolist()]))

    def plan(self, index_batches: Sequence[torch.Tensor]) -> None:
        """The batches `batch` will be asked for next, in order: a streamed split's workers start decoding them
        (nothing to do in memory)."""
        self._planned = None
        if self.in_memory or not index_batches:
            return
        loader = DataLoader(_Items(self.decoder), batch_sampler=[b.tolist() for b in index_batches],
                            num_workers=min(self.workers, len(index_batches)), collate_fn=_collate,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())  # its seed draw must not move the global generator
        self._planned = zip([b.cpu() for b in index_batches], iter(loader))
        self._left = len(index_batches)

    def batch(self, indices: torch.Tensor):
        """The items at `indices`: the next planned batch where they are its indices, else decoded now."""
        planned = next(self._planned, None) if self._planned is not None else None
        if planned is None or not torch.equal(planned[0], indices.cpu()):
            self._planned = None  # asked for something else: the plan no longer holds
            return self[indices]
        self._left -= 1
        if not self._left:
            self._planned = None  # the plan is done: its workers end now, not when the next one starts
        return self._to_device(planned[1])

    def iterate(self, index_batches: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, object]]:
        """(indices, items) for each of `index_batches`, in order (validation, snapshots)."""
        self.plan(index_batches)
        for indices in index_batches:
            yield indices, self.batch(indices)

    def _to_device(self, items):
        if isinstance(items, str):  # a worker's read error (see _Items)
            raise DlcvError(items)
        return _one(tuple(t.to(self.device, non_blocking=True) for t in items))


def _one(items: tuple):
    return items[0] if len(items) == 1 else items


class _Items(Dataset):
    """The decoder's items for DataLoader workers. A file that cannot be read comes back as its one-line
    message, not as an exception (which DataLoader re-raises with the worker's traceback)."""

    def __init__(self, decoder):
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.decoder)

    def __getitem__(self, i: int):
        try:
            return self.decoder(i)
        except DlcvError as exc:
            return str(exc)


def _collate(items: list):
    """Stacks the items' parts into uint8 tensors (default_collate would do it too, one copy more); a read
    error's message stays a message."""
    error = next((item for item in items if isinstance(item, str)), None)
    if error is not None:
        return error
    return tuple(torch.from_numpy(np.stack(parts)) for parts in zip(*items))
