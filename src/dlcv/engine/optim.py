"""Optimizer and per-step learning-rate schedule built from the `optim` and `sched` config sections."""
from __future__ import annotations

import math

import torch
from torch import nn

from dlcv.config import ConfigError


def build_optimizer(named_params, cfg: dict) -> torch.optim.Optimizer:
    """named_params: (name, parameter) pairs. `optim.decay_norm_and_bias: false` puts the 1-D parameters
    (BatchNorm/GroupNorm weights and biases, every bias) in a group without weight decay, as timm's
    filter_bias_and_bn and lightly's BYOL do. `optim.lr_mult` ({name prefix: factor}, mmsegmentation's
    paramwise lr_mult) scales the learning rate of the parameters under that prefix, e.g. {encoder: 0.1}
    for a pretrained encoder under a new decoder; the longest matching prefix wins."""
    o = cfg["optim"]
    named_params = list(named_params)
    mults = o["lr_mult"]
    for prefix in mults:  # each factor's range is the config's (COMMON_RANGES)
        if not any(_under(name, prefix) for name, _ in named_params):
            raise ConfigError(f"config key 'optim.lr_mult.{prefix}': no trainable parameter is named "
                              f"{prefix}.*; top-level names: {sorted({n.split('.')[0] for n, _ in named_params})}")
    groups: dict[tuple[float, bool], list] = {}
    for name, p in named_params:
        prefix = max((k for k in mults if _under(name, k)), key=len, default=None)
        mult = 1.0 if prefix is None else float(mults[prefix])
        groups.setdefault((mult, o["decay_norm_and_bias"] or p.ndim > 1), []).append(p)
    params = [{"params": ps, "lr": o["lr"] * mult, **({} if decayed else {"weight_decay": 0.0})}
              # decayed groups first, the order every saved optimizer state has (it loads by group position)
              for (mult, decayed), ps in sorted(groups.items(), key=lambda group: not group[0][1])]
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                               weight_decay=o["weight_decay"])
    cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# The longest warm-up, as a fraction of the run: a recipe shortened with --set train.epochs=N keeps a
# warm-up followed by its decay (p1_cpu's 2 warm-up epochs would otherwise be the whole of a 2-epoch run,
# its learning rate rising to the peak and never coming down).
MAX_WARMUP_FRACTION = 0.5


def warmup_epochs(cfg: dict) -> float:
    """sched.warmup_epochs, at most MAX_WARMUP_FRACTION of train.epochs."""
    return min(cfg["sched"]["warmup_epochs"], MAX_WARMUP_FRACTION * cfg["train"]["epochs"])


def lr_factor(epoch_float: float, cfg: dict) -> float:
    """LR multiplier at a fractional epoch. `multistep` matches MultiStepLR stepped once per epoch."""
    s, epochs = cfg["sched"], cfg["train"]["epochs"]
    warmup = warmup_epochs(cfg)
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


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning-rate schedule, stepped once per optimizer step: each group's lr is its base lr times
    `factor()`, one factor for every group."""

    def factor(self) -> float:
        """The schedule's factor at the current step (optim.lr times it is the lr now)."""
        return self.lr_lambdas[0](self.last_epoch)

    def rebase(self) -> None:
        """Base lrs from the optimizer's groups as they are now (the config's, after a resume), each group's
        lr put at its base times the current factor."""
        self.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int) -> StepSchedule:
    """The lambda sees the step count and converts it to epochs."""
    if cfg["sched"]["name"] == "multistep":
        # MultiStepLR semantics: the lr of an epoch is fixed for the whole epoch.
        return StepSchedule(optimizer, lambda step: lr_factor(float(step // steps_per_epoch), cfg))
    return StepSchedule(optimizer, lambda step: lr_factor(step / steps_per_epoch, cfg))


def keep_config_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: StepSchedule,
                                config_groups: list[dict]) -> list[str]:
    """After a checkpoint's optimizer and scheduler state are loaded on resume. torch's load_state_dict brings
    back the saved lr, weight decay, momentum...; the config's values (config_groups: the param_groups as
    built, without "params") are put back so that a resumed run trains with what its config.yaml and
    metrics.csv say. Unchanged values give back the same numbers, so an exact resume stays exact.
    Returns the changes as "key old -> new (group i)" for the log."""
    changes = []
    for i, (group, config) in enumerate(zip(optimizer.param_groups, config_groups)):
        for key, value in config.items():
            if key != "lr" and _plain(group.get(key)) != _plain(value):
                changes.append(f"{'lr' if key == 'initial_lr' else key} {group.get(key)} -> {value} (group {i})")
            group[key] = value
    scheduler.rebase()  # the base lrs from the config, the step from the checkpoint
    return changes


def _plain(value):
    return list(value) if isinstance(value, tuple) else value  # betas: a tuple as built, maybe a list as saved


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]
