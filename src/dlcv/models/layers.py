"""Layers shared by the model builders."""
from __future__ import annotations

import math

from torch import nn

from dlcv.errors import DlcvError


def norm_layer(channels: int, norm: str) -> nn.Module:
    """BatchNorm, or GroupNorm (batch-independent: small test models use it to check that DDP matches
    one process exactly, which per-process BatchNorm statistics cannot)."""
    if norm not in ("batch", "group"):
        raise DlcvError(f"model option norm must be 'batch' or 'group', got {norm!r}")
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(math.gcd(8, channels), channels)
