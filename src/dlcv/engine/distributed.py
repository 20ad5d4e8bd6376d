"""Process-group set-up under torchrun (env:// variables), and reductions of metric sums over ranks."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dlcv.config import env_whole_number
from dlcv.errors import DlcvError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise DlcvError("device=cuda requested but no CUDA GPU is available; use device=auto or cpu")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(preference: str) -> DistEnv:
    """Single process unless launched by torchrun (WORLD_SIZE > 1): then NCCL on GPUs, gloo on CPUs."""
    world = env_whole_number("WORLD_SIZE", 1, minimum=1)
    rank = env_whole_number("RANK", 0)
    local_rank = env_whole_number("LOCAL_RANK", 0)
    if rank >= world:
        raise DlcvError(f"environment variable RANK={rank} must be below WORLD_SIZE={world} (torchrun sets both)")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(name)]
    if missing:  # what torch's env:// rendezvous reads: without them it fails deep inside with a traceback
        raise DlcvError(f"environment variable WORLD_SIZE={world} is set without {', '.join(missing)}: start a run "
                        "of several processes with torchrun, which sets them all")
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """At the end of the process (cli.main): one `setup` serves every run of a pipeline (`ssl table`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
