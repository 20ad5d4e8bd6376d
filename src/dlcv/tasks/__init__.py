"""Tasks: classify, ssl, segment (registered in task_registry.py), each a thin layer over the engine (the
contract: engine/task.py); ModelTask is their shared base and validate_classes their validation loop."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dlcv.engine import batches, distributed
from dlcv.engine.task import Context, Task
from dlcv.models import model_spec


def fill_model_defaults(cfg: dict) -> dict:
    """data.mean / data.std left null mean the model's own (its registry entry): written into `cfg`, so
    the config a run saves holds the numbers it used."""
    spec = model_spec(cfg["model"]["name"])
    for key in ("mean", "std"):
        if cfg["data"][key] is None:
            cfg["data"][key] = list(getattr(spec, key))
    return cfg


def validate_classes(ctx: Context, confusion, predictor, images: torch.Tensor,
                     targets: torch.Tensor) -> tuple[np.ndarray, float]:
    """Every process's share of the validation set through `predictor` (a Classifier or Segmenter): the
    confusion matrix (torchmetrics sums it over DDP ranks) and the summed cross-entropy over all ranks."""
    confusion.reset()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for idx in batches.eval_batches(len(targets), predictor.batch_size, ctx.rank, ctx.world_size):
        idx = idx.to(ctx.device)
        logits, y = predictor.logits(images[idx]), targets[idx].long()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion.update(logits.argmax(1), y)
    return confusion.compute().cpu().numpy(), distributed.all_reduce_sum(loss_sum).item()


class ModelTask(Task):
    """A task over one registered model (config key model.name), whose measured CPU fast paths it passes
    on to the loop."""

    def __init__(self, cfg: dict):
        self.cfg = fill_model_defaults(cfg)
        spec = model_spec(cfg["model"]["name"])
        self.cpu_bf16, self.cpu_channels_last = spec.cpu_bf16, spec.cpu_channels_last
