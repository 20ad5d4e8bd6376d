"""Optimizer and per-step learning-rate schedule built from the `optim` and `sched` config sections."""
from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """`optim.decay_norm_and_bias: false` puts the 1-D parameters (BatchNorm/GroupNorm weights and biases,
    every bias) in a group without weight decay, as timm's filter_bias_and_bn and lightly's BYOL do."""
    o = cfg["optim"]
    params = list(params)
    if not o["decay_norm_and_bias"]:
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                               weight_decay=o["weight_decay"])
    cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])


def lr_factor(epoch_float: float, cfg: dict) -> float:
    """LR multiplier at a fractional epoch. `multistep` matches MultiStepLR stepped once per epoch."""
    s, epochs = cfg["sched"], cfg["train"]["epochs"]
    warmup = s["warmup_epochs"]
    if warmup and epoch_float < warmup:
        return (epoch_float + 1e-8) / warmup
    if s["name"] == "multistep":
        return s["gamma"] ** sum(epoch_float >= m for m in s["milestones"])
    progress = min(1.0, (epoch_float - warmup) / max(1e-8, epochs - warmup))
    floor = s["final_lr_ratio"]
    if s["name"] == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if s["name"] == "onecycle":  # linear decay after the warm-up, as airbench's triangular schedule
        return floor + (1 - floor) * (1 - progress)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
    """Stepped once per optimizer step; the lambda sees the step count and converts it to epochs."""
    if cfg["sched"]["name"] == "multistep":
        # MultiStepLR semantics: the lr of an epoch is fixed for the whole epoch.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(float(step // steps_per_epoch), cfg))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step / steps_per_epoch, cfg))


def trainable_parameters(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]
