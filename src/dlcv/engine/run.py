"""The run directory: resolved config, per-epoch metrics, summary, environment, logs and TensorBoard."""
from __future__ import annotations

import csv
import io
import json
import logging
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import dlcv
from dlcv import config as config_mod
from dlcv.fileio import write_text

log = logging.getLogger("dlcv")


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """What is needed to reproduce a number: versions, device, git commit, command line."""
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(dlcv.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "dlcv": dlcv.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "platform": platform.platform(), "device": str(device),
        "device_name": name, "world_size": world_size, "cpu_threads": torch.get_num_threads(),
        "git_commit": commit, "command": command_line(),
    }


def command_line() -> str:
    """The dlcv command as a user would retype it (`dlcv ...` whether started as the console script,
    `python -m dlcv` or under torchrun); other entry points (the demo's API calls, tests) as they were."""
    script = Path(sys.argv[0]).name
    if script in ("dlcv", "__main__.py") and Path(sys.argv[0]).parent.name in ("bin", "dlcv", "Scripts"):
        return shlex.join(["dlcv", *sys.argv[1:]])
    return shlex.join(sys.argv)


class RunDir:
    def __init__(self, path: str | Path, is_main: bool):
        self.path = Path(path)
        self.is_main = is_main
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"
        self.snapshots = self.path / "snapshots"
        self.rows: list[dict[str, Any]] = []
        self._tb = None
        if is_main:
            for folder in (self.path, self.checkpoints, self.figures, self.snapshots):
                folder.mkdir(parents=True, exist_ok=True)
            self._attach_log_file()

    def _attach_log_file(self) -> None:
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)

    def write_config(self, cfg: dict) -> None:
        if self.is_main:
            write_text(self.path / "config.yaml", config_mod.dump(cfg))

    def load_metrics(self, upto_epoch: int) -> None:
        """On resume: keep the rows of the epochs the checkpoint covers, drop any later ones."""
        f = self.path / "metrics.csv"
        if f.is_file():
            self.rows = [r for r in read_metrics(f) if r["epoch"] <= upto_epoch]

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.is_main:
            return
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path / "metrics.csv", out.getvalue())
        tb = self.tensorboard()
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                tb.add_scalar(key, value, row["epoch"])
        tb.flush()

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        return self._tb

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for handler in list(log.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == self.path:
                log.removeHandler(handler)
                handler.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv with numbers as numbers."""
    with open(path, newline="") as fh:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def default_run_dir(config_path: str | None, task: str) -> Path:
    stem = Path(config_path).stem if config_path else task
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
