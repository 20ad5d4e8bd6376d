"""Everything between a loaded model and its outputs, one path for validation in training, the mask and
feature snapshots and every predict command (hw1_1.sh, hw1_2.sh, hw1_3.sh, embed): the run's
preprocessing, its test-time views, its precision and memory layout, its evaluation batch size, feature
capture. So the graded commands predict, on the same machine, the labels the run's last validation
counted."""
from __future__ import annotations

import logging
from typing import Any

import torch

from dlcv.engine.precision import Numerics, for_predict, resolve_channels_last, resolve_precision
from dlcv.models import model_spec

log = logging.getLogger("dlcv")


def checkpoint_numerics(state: dict[str, Any], device: torch.device, requested: str, where: str) -> Numerics:
    """The numerics predict runs a checkpoint in (engine.precision.for_predict): from what its run
    recorded, or, in a checkpoint of a dlcv before the record, what its config resolves to on this device
    (what its run validated in, if it trained here)."""
    if "inference" in state:
        validated = Numerics.from_record(state["inference"], where)
    else:
        train, spec = state["config"]["train"], model_spec(state["config"]["model"]["name"])
        validated = Numerics(resolve_precision(train["precision"], device, spec.cpu_bf16),
                             resolve_channels_last(train["channels_last"], device, spec.cpu_channels_last))
        log.info("%s records no inference settings (an older dlcv): %s, channels_last %s from its config on %s",
                 where, validated.precision, validated.channels_last, device)
    return for_predict(validated, requested, device)


def checkpoint_batch_size(state: dict[str, Any], requested: int | None) -> int:
    """`requested`, else the run's train.eval_batch_size: the batches its validation ran (some kernels
    round differently by batch size)."""
    return requested or state["config"]["train"]["eval_batch_size"]
