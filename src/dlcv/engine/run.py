"""The run directory, the one owner of its files: resolved config, per-epoch metrics, the typed summary
(`Summary`, read back with `read_summary`), environment, logs and TensorBoard."""
from __future__ import annotations

import csv
import functools
import io
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import dlcv
from dlcv import config as config_mod
from dlcv.errors import DlcvError
from dlcv.fileio import DirectoryLock, write_text
from dlcv.malloc import settings_in_effect

log = logging.getLogger("dlcv")


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """What is needed to reproduce a number: versions, device, git commit, command line."""
    import torchvision

    commit = dlcv.source_commit()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "dlcv": dlcv.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "platform": platform.platform(), "device": str(device),
        "device_name": name, "world_size": world_size, "cpu_threads": torch.get_num_threads(),
        "git_commit": commit, "command": command_line(),
        "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(), "malloc": settings_in_effect(),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """bf16 instructions in hardware (AVX512_BF16 or AMX-BF16), not emulated. oneDNN's own check
    (`_is_mkldnn_bf16_supported`) is also True on AVX-512 CPUs that only emulate bf16, so on Linux the
    CPU's flags decide too."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return True  # no /proc (macOS, Windows): trust oneDNN
    return "avx512_bf16" in flags or "amx_bf16" in flags


def command_line() -> str:
    """The dlcv command as a user would retype it (`dlcv ...` whether started as the console script,
    `python -m dlcv` or under torchrun); other entry points (the demo's API calls, tests) as they were."""
    script = Path(sys.argv[0]).name
    if script in ("dlcv", "__main__.py") and Path(sys.argv[0]).parent.name in ("bin", "dlcv", "Scripts"):
        return shlex.join(["dlcv", *sys.argv[1:]])
    return shlex.join(sys.argv)


@dataclass
class Summary:
    """summary.json: what every reader of a run uses (report, demo, `ssl table`, CLI, benchmarks). The file
    is the fields below, in this order, with `extras` (a task's non-scalar metrics of the last validated
    epoch, e.g. per_class_iou) spread at the top level after `final`."""
    task: str
    status: str  # "running" while training, "finished" after the last epoch
    monitor: str  # the metric that selects best.pt
    best: dict[str, Any]  # {monitor: best value or None, "epoch": its epoch or None}
    final: dict[str, Any]  # the last epoch's row of metrics.csv
    seed: int
    wall_time_s: float
    environment: dict[str, Any]  # versions, device, precision, memory layout, command line, git commit
    run_dir: str
    extras: dict[str, Any] = field(default_factory=dict)
    # what the run read: the data's identity and its weights file's sha256 (engine/identity.py compares them)
    inputs: dict[str, Any] = field(default_factory=dict)

    HEAD = ("task", "status", "monitor", "best", "final")  # required; the extras follow them in the file
    FIELDS = (*HEAD, "seed", "wall_time_s", "environment", "run_dir", "inputs")

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def best_value(self) -> float | None:
        return self.best[self.monitor]

    @property
    def best_epoch(self) -> int | None:
        return self.best["epoch"]

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in self.HEAD}
        return {**head, **self.extras, **{k: getattr(self, k) for k in self.FIELDS if k not in head}}

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> "Summary":
        missing = [k for k in cls.HEAD if not isinstance(data, dict) or k not in data]
        if missing or not isinstance(data.get("best"), dict) or data["monitor"] not in data["best"]:
            what = ", ".join(missing) or f"best.{data.get('monitor')}"
            raise DlcvError(f"{source}: not a dlcv summary (missing {what})")
        known = {k: data.get(k) for k in cls.FIELDS}
        known["environment"] = known["environment"] or {}
        known["inputs"] = known["inputs"] or {}  # runs made before dlcv recorded them
        return cls(**known, extras={k: v for k, v in data.items() if k not in cls.FIELDS})


def read_summary(run_dir: str | Path) -> Summary:
    """A run directory's summary.json, checked; a clear error names the file otherwise."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DlcvError(f"{run_dir} is not a dlcv run directory (missing {path})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DlcvError(f"{path}: not valid JSON ({exc})") from None
    return Summary.from_json(data, path)


class RunDir:
    """A run's folder. `open()` (main rank) takes the folder's lock for the whole run, so two commands
    never write one run; `close()` releases it. Files are written in an order that keeps the folder
    resumable at any kill: checkpoints first, then metrics.csv and summary.json (see Trainer.fit)."""

    def __init__(self, path: str | Path, is_main: bool):
        self.path = Path(path)
        self.is_main = is_main
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"
        self.snapshots = self.path / "snapshots"
        self.last = self.checkpoints / "last.pt"
        self.rows: list[dict[str, Any]] = []
        self._tb = None
        self._lock = DirectoryLock(self.path)

    def open(self) -> None:
        if not self.is_main:
            return
        self._lock.acquire()
        for folder in (self.checkpoints, self.figures, self.snapshots):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.path.rglob(".*.tmp"):  # left by a process killed inside an atomic write
            stale.unlink(missing_ok=True)
        self._attach_log_file()

    def started(self) -> bool:
        """Whether a run was started here (its config is written before any data is read)."""
        return (self.path / "config.yaml").is_file() or self.last.is_file()

    def finished(self) -> bool:
        try:
            return read_summary(self.path).finished
        except (OSError, DlcvError):
            return False

    def _attach_log_file(self) -> None:
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)

    def write_config(self, cfg: dict) -> None:
        if self.is_main:
            write_text(self.path / "config.yaml", config_mod.dump(cfg))

    def restore_rows(self, rows: list[dict[str, Any]]) -> None:
        """On resume: the epoch rows saved in last.pt are the truth; metrics.csv is rewritten from them
        (it may lag by one epoch, or hold a row of an epoch whose checkpoint never landed)."""
        self.rows = [dict(r) for r in rows]
        self._write_metrics()

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.is_main:
            return
        self._write_metrics()
        tb = self.tensorboard()
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                tb.add_scalar(key, value, row["epoch"])
        tb.flush()

    def _write_metrics(self) -> None:
        if not self.is_main or not self.rows:
            return
        out = io.StringIO()
        # the columns of the fullest row: epochs without validation (train.eval_every) leave its cells blank
        columns = list(dict.fromkeys([*max(self.rows, key=len), *(k for r in self.rows for k in r)]))
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path / "metrics.csv", out.getvalue())

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        return self._tb

    def write_summary(self, summary: Summary) -> None:
        if self.is_main:
            write_text(self.path / "summary.json", json.dumps(summary.to_json(), indent=2, default=str) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for handler in list(log.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == self.path:
                log.removeHandler(handler)
                handler.close()
        self._lock.release()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv with numbers as numbers."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DlcvError(f"{path}: not a readable metrics CSV ({exc})") from None


def _number(value: str | None) -> Any:
    if not value:  # a short row, or an epoch without validation (train.eval_every)
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def default_run_dir(config_path: str | None, task: str) -> Path:
    stem = Path(config_path).stem if config_path else task
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
