"""The task registry: every task is one module plus one registration line, and the command line, the config
and the report read the rest from there."""
from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import assert_runs_in_a_fresh_python
from dlcv import task_registry
from dlcv.cli import build_parser, main
from dlcv.engine.run import read_summary
from dlcv.engine.task import Task
from dlcv.report.runs import load_run


@pytest.mark.parametrize("entry", task_registry.TASKS, ids=lambda e: e.name)
def test_each_task_module_takes_its_name_from_its_registration(entry):
    module = entry.load()
    assert module.SCHEMA.task == module.TASK.name == entry.name
    assert issubclass(module.TASK, Task)
    assert task_registry.by_command(entry.group, entry.verb) is entry
    args = build_parser().parse_args([entry.group, entry.verb, "-c", "x.yaml", "--out", "run"])
    assert (args.group, args.cmd) == (entry.group, entry.verb)


def test_the_command_line_starts_without_torch():
    assert_runs_in_a_fresh_python(
        "import sys, dlcv.cli; dlcv.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")


# A whole new task: this module and the one registration line below are all it takes.
THROWAWAY = '''
    import torch
    from torch import nn

    from dlcv import config as config_mod
    from dlcv.engine.task import Task
    from dlcv.task_registry import registered

    ENTRY = registered(__name__)
    DEFAULTS = {"task": ENTRY.name, "data": {"root": None, "samples": 64}, "model": {"name": "linear"}}
    SCHEMA = config_mod.Schema(DEFAULTS, dict, {}, {"data.samples": (lambda v: v >= 2, "a whole number >= 2")})


    class MeanTask(Task):
        """Learns the mean of random vectors (a regression with one bias)."""
        name, monitor, monitor_mode = ENTRY.name, "val_mse", "min"

        def setup(self, ctx):
            gen = torch.Generator().manual_seed(0)
            self.x = torch.randn(self.cfg["data"]["samples"], 4, generator=gen) + 3

        def __init__(self, cfg):
            self.cfg = cfg

        def build_model(self, ctx):
            return nn.Linear(4, 4)

        def num_train(self):
            return len(self.x)

        def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
            return self.x[indices]

        def loss(self, model, batch):
            return ((model(batch * 0) - batch) ** 2).mean()

        def evaluate(self, ctx, model):
            return {"val_mse": ((model(self.x * 0) - self.x) ** 2).mean().item()}


    TASK = MeanTask
'''


def test_a_new_task_is_one_module_and_one_registration_line(tmp_path, monkeypatch):
    (tmp_path / "mean_task.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(task_registry, "TASKS", (*task_registry.TASKS, task_registry.TaskEntry(
        "mean", "mean train", "learn a mean", "the mean task", "mean_task", "p1")))
    recipe = tmp_path / "mean.yaml"
    recipe.write_text(f"task: mean\ndata: {{root: {tmp_path}}}\ntrain: {{epochs: 3, batch_size: 16, precision: fp32}}\n"
                      "optim: {lr: 0.1}\n")
    assert main(["mean", "train", "-c", str(recipe), "--out", str(tmp_path / "run")]) == 0
    summary = read_summary(tmp_path / "run")
    assert summary.task == "mean" and summary.finished and summary.best_value < 9
    assert load_run(tmp_path / "run").rerun_command.startswith("dlcv mean train -c ")
    assert main(["mean", "train", "-c", str(recipe), "--set", "data.samples=1", "--out", str(tmp_path / "r2")]) == 2
    assert main(["classify", "train", "-c", str(recipe), "--out", str(tmp_path / "r3")]) == 2  # names `mean train`
    sys.modules.pop("mean_task", None)
