"""Tasks: classify, ssl, segment (registered in task_registry.py), each a thin layer over the engine (the
contract: engine/task.py); ModelTask is their shared base, source_of how they hold a split and
validate_classes their validation loop."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dlcv.data.sources import Source
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


def source_of(d: dict, decoder, device: torch.device, what: str) -> Source:
    """A split as the data settings `d` hold it: in memory or streamed (data.in_memory, data.workers),
    cached under data.cache_dir."""
    return Source(decoder, device, d["in_memory"], d["workers"], d["cache_dir"], what)


def validate_classes(ctx: Context, confusion, predictor, source: Source, targets: torch.Tensor | None = None,
                     ignore_index: int = -100) -> tuple[np.ndarray, float]:
    """Every process's share of the validation set through `predictor` (a Classifier or Segmenter): the
    confusion matrix (torchmetrics sums it over DDP ranks) and the summed cross-entropy over all ranks.
    `source` holds the images, and the targets unless `targets` are given (classification's labels);
    target pixels of `ignore_index` count nowhere."""
    confusion.reset()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    chunks = list(batches.eval_batches(len(source), predictor.batch_size, ctx.rank, ctx.world_size))
    for idx, items in source.iterate(chunks):
        x, y = (items, targets[idx.to(ctx.device)]) if targets is not None else items
        logits, y = predictor.logits(x), y.long()
        loss_sum += F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum").double()
        confusion.update(logits.argmax(1), y)
    return confusion.compute().cpu().numpy(), distributed.all_reduce_sum(loss_sum).item()


class ModelTask(Task):
    """A task over one registered model (config key model.name), whose measured CPU fast paths it passes
    on to the loop."""

    def __init__(self, cfg: dict):
        self.cfg = fill_model_defaults(cfg)
        spec = model_spec(cfg["model"]["name"])
        self.cpu_bf16, self.cpu_channels_last = spec.cpu_bf16, spec.cpu_channels_last
