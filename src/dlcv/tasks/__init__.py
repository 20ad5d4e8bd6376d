"""Tasks: classify, ssl, segment; each a thin layer over the engine (the contract: engine/task.py)."""
from __future__ import annotations

from dlcv.engine.task import Task
from dlcv.models import model_spec


class ModelTask(Task):
    """A task over one registered model (config key model.name), whose measured CPU fast paths it passes
    on to the loop."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        spec = model_spec(cfg["model"]["name"])
        self.cpu_bf16, self.cpu_channels_last = spec.cpu_bf16, spec.cpu_channels_last
