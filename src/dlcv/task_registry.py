"""The task registry: one line per task names it, its training command and the module that implements it.

This module imports nothing heavy (no torch): the command line builds its parser from it before any task
is imported, and the report and the demo read their commands from it. Everything else about a task (its
config schema with defaults, types, choices and ranges, and its `Task` subclass as `TASK`) is declared once,
in its module; the module reads its own name from here (`registered(__name__)`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class TaskEntry:
    name: str  # the config's `task` key, every checkpoint's and summary's task
    command: str  # the `dlcv` command that trains it: "GROUP VERB"
    help: str  # that command's help line
    group_help: str  # the help line of its command group
    module: str  # the module that declares SCHEMA and TASK
    problem: str  # the course problem its runs answer in the report (p1, p2, p3)
    predict: str | None = None  # the `dlcv` command that runs its checkpoints ("GROUP VERB"), if any
    inference: str | None = None  # the module that reads its checkpoints and builds what they compute (export, API)

    @property
    def group(self) -> str:
        return self.command.split()[0]

    @property
    def verb(self) -> str:
        return self.command.split()[1]

    def load(self) -> ModuleType:
        """The task's module (imports torch): SCHEMA, TASK."""
        return importlib.import_module(self.module)

    def load_inference(self) -> ModuleType:
        """The module that reads the task's checkpoints (imports torch): read_checkpoint, PREPROCESS_CHECKS,
        exportable."""
        return importlib.import_module(self.inference)


TASKS: tuple[TaskEntry, ...] = (
    TaskEntry("classify", "classify train", "train a classifier", "P1 image classification",
              "dlcv.tasks.classify", "p1", "classify predict",
              "dlcv.inference.classify"),
    TaskEntry("ssl", "ssl pretrain", "BYOL pre-training on an unlabeled image folder",
              "P2 BYOL pre-training and transfer settings A-E", "dlcv.tasks.ssl", "p2", "ssl export",
              "dlcv.inference.embed"),
    TaskEntry("segment", "segment train", "train a segmentation model", "P3 semantic segmentation",
              "dlcv.tasks.segment", "p3", "segment predict",
              "dlcv.inference.segment"),
)


def task(name: str) -> TaskEntry:
    """The entry of a task name (a config's `task`)."""
    for entry in TASKS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def by_command(group: str, verb: str | None) -> TaskEntry | None:
    """The task `dlcv GROUP VERB` trains, or None for any other command."""
    return next((entry for entry in TASKS if (entry.group, entry.verb) == (group, verb)), None)


def registered(module: str) -> TaskEntry:
    """A task module's own entry (`registered(__name__)`), from which it takes its name."""
    return next(entry for entry in TASKS if entry.module == module)
