"""Tasks: classify, ssl, segment; each a thin layer over the engine (the contract: engine/task.py)."""
from __future__ import annotations

from dlcv.engine.task import Task
from dlcv.models import model_spec


def fill_model_defaults(cfg: dict) -> dict:
    """data.mean / data.std left null mean the model's own (its registry entry): written into `cfg`, so
    the config a run saves holds the numbers it used."""
    spec = model_spec(cfg["model"]["name"])
    for key in ("mean", "std"):
        if cfg["data"][key] is None:
            cfg["data"][key] = list(getattr(spec, key))
    return cfg


class ModelTask(Task):
    """A task over one registered model (config key model.name), whose measured CPU fast paths it passes
    on to the loop."""

    def __init__(self, cfg: dict):
        self.cfg = fill_model_defaults(cfg)
        spec = model_spec(cfg["model"]["name"])
        self.cpu_bf16, self.cpu_channels_last = spec.cpu_bf16, spec.cpu_channels_last
