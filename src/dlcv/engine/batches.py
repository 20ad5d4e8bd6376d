"""Index batches of a dataset (in memory or streamed: data/sources.py), split over DDP ranks.

Training: one permutation per epoch from a generator seeded by (seed, epoch); each step takes the next
`global_batch` indices and rank r keeps the r-th contiguous slice. Unlike DistributedSampler (which
interleaves and pads per rank), N ranks then see exactly the batches one process sees, so metrics and
weights agree across world sizes and a resumed epoch replays exactly. The last partial batch is dropped.
Evaluation: each rank takes one contiguous chunk, no padding, so every image is counted exactly once.
"""
from __future__ import annotations

from typing import Iterator

import torch

from dlcv.errors import DlcvError


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 100_003 + epoch)
    return gen


def steps_per_epoch(num_items: int, global_batch: int) -> int:
    if global_batch > num_items:
        raise DlcvError(f"train.batch_size={global_batch} is larger than the training set ({num_items} images)")
    return num_items // global_batch


def train_batches(num_items: int, global_batch: int, seed: int, epoch: int, rank: int,
                  world: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Yields (indices of this rank, offset of this rank's slice in the global batch)."""
    if global_batch % world:
        raise DlcvError(f"train.batch_size={global_batch} must be divisible by the number of processes ({world})")
    local = global_batch // world
    perm = torch.randperm(num_items, generator=epoch_generator(seed, epoch))
    for step in range(steps_per_epoch(num_items, global_batch)):
        start = step * global_batch + rank * local
        yield perm[start:start + local], rank * local


def eval_batches(num_items: int, batch_size: int, rank: int, world: int) -> Iterator[torch.Tensor]:
    chunk = torch.arange(num_items).tensor_split(world)[rank]
    yield from chunk.split(batch_size)
