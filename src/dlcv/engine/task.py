"""The contract between the training loop and a task: what a task supplies (`Task`) and what the loop hands
every call (`Context`). A new task is a subclass of `Task` that fills in the methods below; it owns its data,
model and loss and never holds the trainer (timm's TrainingTask idea)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlcv.engine.precision import Numerics
from dlcv.engine.run import RunDir


@dataclass
class Context:
    """Set up by the loop; `module`, `eval_module` and `total_steps` are filled in once the model exists."""
    device: torch.device
    rank: int
    world_size: int
    run: RunDir  # the run folder's paths (figures, snapshots) and files
    # the precision it trains and validates in and its memory layout (train.precision and
    # train.channels_last, resolved once by the loop); recorded in every checkpoint, for predict
    numerics: Numerics
    module: nn.Module | None = None  # the weights being trained, unwrapped: no DDP, no compile
    eval_module: nn.Module | None = None  # what is validated, snapshotted and saved: the EMA, or `module`
    total_steps: int = 0  # optimizer steps of the whole run (schedules over the run, e.g. BYOL's target)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of model inputs on the device, in the run's memory layout."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.numerics.channels_last and x.ndim == 4 else x


class Task:
    """What the loop calls, in order: `setup` once (read the data onto ctx.device), `build_model` once, then
    per epoch `plan_epoch` and per step `train_batch` -> `loss` (under autocast) -> backward/step -> `after_step`;
    per validated epoch `evaluate` (no grad), `snapshot` on the epochs chosen for figures, and `finish` at the end
    on the main process. Outside training steps the task autocasts itself, once, in `ctx.numerics` (inference/'s
    Classifier and Segmenter do). `checkpoint_meta` adds what the task's predict command needs to every checkpoint."""
    name: str
    monitor: str  # the epoch row's metric (evaluate()'s scalars or train_loss) that selects best.pt
    monitor_mode = "max"  # or "min"
    # CPU fast paths the model was measured to gain from (the model registry's cpu_bf16 / cpu_channels_last):
    # train.precision=auto and train.channels_last=auto take them on a CPU
    cpu_bf16 = True
    cpu_channels_last = True

    def setup(self, ctx: Context) -> None:
        raise NotImplementedError

    def build_model(self, ctx: Context) -> nn.Module:
        raise NotImplementedError

    def num_train(self) -> int:
        """Training samples per epoch (the loop draws the batches: the same on any number of processes)."""
        raise NotImplementedError

    def plan_epoch(self, ctx: Context, epoch: int, index_batches: list[torch.Tensor]) -> None:
        """Before an epoch's first step: the `indices` of each of its train_batch calls on this process, in
        order (a task whose data streams from disk starts decoding them). The loop still draws them."""

    def train_batch(self, ctx: Context, indices: torch.Tensor, offset: int, gen: torch.Generator,
                    global_size: int, epoch: int) -> Any:
        """This process's share of a global batch: `indices` into the training set, `offset` its position in
        the global batch of `global_size`, `gen` the epoch's generator for per-sample augmentation draws."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, ctx: Context, step: int) -> None:
        """After every optimizer step (e.g. BYOL's target update)."""

    def evaluate(self, ctx: Context, model: nn.Module) -> dict[str, Any]:
        """Metrics of the epoch: scalars go to metrics.csv, anything else to summary.json. `model` is what to
        run (compiled with train.compile); `ctx.eval_module` holds the same weights as a plain module."""
        raise NotImplementedError

    def snapshot(self, ctx: Context, model: nn.Module, epoch: int) -> None:
        """Per-epoch data kept for the figures (features, masks); nothing by default."""

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        """Figures and exports from the finished run's rows and snapshots (main process only)."""

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}

    def data_identity(self) -> dict[str, Any]:
        """After `setup`: what identifies the data read, compared when the run is resumed."""
        return {"train_samples": self.num_train()}
