"""Reading finished run directories (config.yaml, summary.json, metrics.csv, figures/) and sorting them into
the course report's problems and roles. Only files are read: the report never imports a task."""
from __future__ import annotations

import csv
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcv import config as config_mod, task_registry
from dlcv.engine.run import Summary, read_metrics, read_summary
from dlcv.errors import DlcvError

# The report's models A / B, and the offline stand-ins that play a role; any other model is one of ours.
REPORT_MODELS = {("p1", "A"): "resnet50_cifar", ("p1", "B"): "efficientnet_v2_l",
                 ("p3", "A"): "fcn32s_vgg16", ("p3", "B"): "fcn_resnet50"}
STAND_INS = {("p1", "B"): ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    summary: Summary
    rows: list[dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def problem(self) -> str | None:
        """The course problem the run recorded it answers (data/layouts.py: from its data's layout; None: a
        dataset of the user's own); a run of a dlcv before the record: its task's problem."""
        if "problem" in self.summary.inputs:
            return self.summary.inputs["problem"]
        return task_registry.task(self.task).problem

    @property
    def role(self) -> str:
        for (problem, role), model in REPORT_MODELS.items():
            if problem == self.problem and self.model in (model, *STAND_INS.get((problem, role), ())):
                return role
        return "ours"

    @property
    def finished(self) -> bool:
        return self.summary.finished

    @property
    def monitor(self) -> str:
        return self.summary.monitor

    @property
    def best(self) -> float | None:
        return self.summary.best_value

    @property
    def made_by(self) -> str:
        """The command line that made the run, as recorded: its own training command, or a pipeline's
        (`dlcv demo`, `dlcv ssl table`) that made several."""
        return self.summary.environment.get("command", "")

    @property
    def rerun_command(self) -> str:
        """Trains this run again from its own resolved config.yaml (whatever command made it), into a new
        folder beside where it is run."""
        config_file = shlex.quote(str(self.path / "config.yaml"))
        out = shlex.quote(f"runs/{self.path.name}_again")
        return f"dlcv {task_registry.task(self.task).command} -c {config_file} --out {out}"

    @property
    def train_samples(self) -> int | None:
        return self.summary.inputs.get("train_samples")

    @property
    def classes(self) -> int | None:
        """The number of classes the run's model outputs (classification records its class names)."""
        names = self.summary.inputs.get("classes")
        return len(names) if names else None

    def figures_like(self, prefix: str) -> list[Path]:
        return [p for name, p in sorted(self.figures.items()) if name.startswith(prefix)]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    files = {name: path / name for name in ("config.yaml", "summary.json")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise DlcvError(f"{path} is not a dlcv run directory (missing {', '.join(missing)})")
    summary = read_summary(path)
    rows = read_metrics(path / "metrics.csv") if (path / "metrics.csv").is_file() else []
    if any(not isinstance(r.get("epoch"), int) for r in rows):
        raise DlcvError(f"{path / 'metrics.csv'}: malformed (every row needs a whole epoch number)")
    figures = {p.stem: p for p in sorted((path / "figures").glob("*.png"))}
    return Run(path, _run_config(files["config.yaml"]), summary, rows, figures)


def _run_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml, with what the report reads of it (task, model name and options, data) checked."""
    cfg = config_mod.load_yaml(path)
    model = cfg.get("model")
    if not (isinstance(cfg.get("task"), str) and isinstance(model, dict) and isinstance(model.get("name"), str)
            and isinstance(model.get("options", {}), dict) and isinstance(cfg.get("data"), dict)):
        raise DlcvError(f"{path}: not a dlcv run config (it needs task, model.name and data; an empty or "
                        "hand-edited file?)")
    try:
        task_registry.task(cfg["task"])
    except KeyError:
        known = ", ".join(entry.name for entry in task_registry.TASKS)
        raise DlcvError(f"{path}: task {cfg['task']!r} is not a task of this dlcv ({known})") from None
    return cfg


@dataclass
class Table:
    """A `dlcv ssl table` directory: table.csv and one run per setting."""
    path: Path
    rows: list[dict[str, str]]
    runs: dict[str, Run]


TABLE_COLUMNS = ("setting", "pre-training", "fine-tuning")  # what the report reads of table.csv


def load_table(path: Path) -> Table:
    try:
        with open(path / "table.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DlcvError(f"{path / 'table.csv'}: not a readable CSV ({exc})") from None
    if any(r.get(c) is None for r in rows for c in TABLE_COLUMNS):
        raise DlcvError(f"{path / 'table.csv'}: not a dlcv table (every row needs {', '.join(TABLE_COLUMNS)})")
    runs = {r["setting"]: load_run(path / f"setting_{r['setting']}") for r in rows
            if (path / f"setting_{r['setting']}" / "summary.json").is_file()}
    return Table(path, rows, runs)


def collect(paths: list[str | Path]) -> tuple[list[Run], list[Table]]:
    """Run directories and table directories among `paths` (a folder holding several runs, such as a
    demo's `runs/`, is searched one level down)."""
    runs, tables = [], []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise DlcvError(f"{path}: not a directory")
        if (path / "table.csv").is_file():
            tables.append(load_table(path))
        elif (path / "summary.json").is_file():
            runs.append(load_run(path))
        else:
            found = [p for p in sorted(path.iterdir()) if p.is_dir() and
                     ((p / "summary.json").is_file() or (p / "table.csv").is_file())]
            if not found:
                raise DlcvError(f"{path}: neither a run directory, a table directory nor a folder of them")
            more_runs, more_tables = collect(found)
            runs += more_runs
            tables += more_tables
    return runs, tables
