"""Pipelines: several runs in a row (`ssl table`, `demo`), each a task handed to the engine. A killed
pipeline goes on where it stopped: a finished run is reused, an interrupted one resumed, a missing one
started. Tasks never call each other; a pipeline is where runs of several tasks meet."""
from __future__ import annotations

import logging
from pathlib import Path

from dlcv.engine import identity
from dlcv.engine.run import RunDir, Summary, read_summary
from dlcv.engine.task import Task
from dlcv.engine.trainer import Trainer

log = logging.getLogger("dlcv")


def fit_or_reuse(task: Task, cfg: dict, run_dir: str | Path) -> Summary:
    """A finished run is reused, an interrupted one resumed and a missing one started; a run made with other
    settings or another weights file is refused (identity.check_pipeline_run), a longer one resumed."""
    longer = identity.check_pipeline_run(Path(run_dir), cfg)
    if RunDir(run_dir, True).finished() and not longer:
        log.info("%s is finished; reusing it", run_dir)
        return read_summary(run_dir)
    return Trainer(task, cfg, run_dir, resume=True).fit()
