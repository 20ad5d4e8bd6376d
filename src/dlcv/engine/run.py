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
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

import dlcv
from dlcv import config as config_mod
from dlcv.errors import DlcvError
from dlcv.fileio import DirectoryLock, refuse_special_file, write_text
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
        return self.best.get("epoch")

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in self.HEAD}
        return {**head, **self.extras, **{k: getattr(self, k) for k in self.FIELDS if k not in head}}

    # what each field must be (None allowed where its type is a tuple with type(None))
    TYPES = {"task": str, "status": str, "monitor": str, "best": dict, "final": dict, "seed": (int, type(None)),
             "wall_time_s": (int, float, type(None)), "environment": (dict, type(None)), "run_dir": (str, type(None)),
             "inputs": (dict, type(None))}

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> "Summary":
        missing = [k for k in cls.HEAD if not isinstance(data, dict) or k not in data]
        if missing or not isinstance(data.get("best"), dict) or data["monitor"] not in data["best"]:
            what = ", ".join(missing) or f"best.{data.get('monitor')}"
            raise DlcvError(f"{source}: not a dlcv summary (missing {what})")
        fields = [(k, data.get(k), kind) for k, kind in cls.TYPES.items()]
        best = data["best"][data["monitor"]]
        fields.append((f"best.{data['monitor']}", best, (int, float, type(None))))
        wrong = next(((k, v) for k, v, kind in fields if not isinstance(v, kind) or isinstance(v, bool)), None)
        if wrong is not None:
            raise DlcvError(f"{source}: not a dlcv summary ({wrong[0]} is a {type(wrong[1]).__name__}, not what dlcv "
                            "writes: a damaged or hand-edited file)")
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


# What a run writes at the top of its folder (and `dlcv demo` beside its supervised run: sl_backbone.pt). A
# folder holding anything else is not a run: dlcv neither writes into it nor cleans it.
RUN_ENTRIES = frozenset({"config.yaml", "metrics.csv", "summary.json", "train.log", ".lock", "checkpoints",
                         "figures", "snapshots", "tensorboard", "backbone.pt", "sl_backbone.pt"})


def is_temporary(name: str, targets: Iterable[str] | None = None) -> bool:
    """The name of a file that a killed atomic write (fileio.atomic_path: `.NAME.XXXX.SUFFIX.tmp`) of one of
    `targets` (of any file: None) left behind."""
    return name.startswith(".") and name.endswith(".tmp") and (
        targets is None or any(name.startswith(f".{target}.") for target in targets))


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
        self._attach_log_file()

    def remove_stale_temporaries(self) -> None:
        """Files a process killed inside an atomic write (or while measuring train.epochs=auto's saves) left:
        only the run's own, in its own folders (never in a folder the user keeps in it). Called once the run
        is known to go on: a refused command leaves the folder as it found it."""
        if not self.is_main:
            return
        for folder in (self.path, self.checkpoints, self.figures, self.snapshots):
            targets = RUN_ENTRIES if folder == self.path else None
            for stale in [p for p in folder.iterdir() if is_temporary(p.name, targets) and p.is_file()]:
                stale.unlink(missing_ok=True)
        (self.checkpoints / "measure.pt.tmp").unlink(missing_ok=True)

    def started(self) -> bool:
        """Whether a run was started here (its config is written before any data is read)."""
        return (self.path / "config.yaml").is_file() or self.last.is_file()

    def check(self, resume: bool) -> None:
        """Refusals that need only a look at the folder, before anything is written to it: a folder holding
        files a run does not write (never written into, nor cleaned), a run without --resume, and on --resume
        a run whose last.pt is gone although it saved epochs (starting it over would replace them)."""
        for name in RUN_ENTRIES:  # opening a FIFO named train.log or .lock would wait forever
            refuse_special_file(self.path / name, "run file")
        if not resume and self.started():
            raise DlcvError(f"{self.path} already holds a run; continue it with --resume or pick another --out")
        if resume and self.last.is_file():
            return  # a run to continue, whatever else its owner keeps in its folder
        foreign = self.foreign_entries()
        if foreign:
            raise DlcvError(f"{self.path} holds files a dlcv run does not write ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")
        progressed = self.progressed() if resume else []
        if progressed:
            raise DlcvError(f"--resume: {self.last} is missing, but the run saved epochs ({', '.join(progressed)}): "
                            f"starting it over would replace them; to start afresh, delete {self.path} or pick "
                            "another --out")

    def is_fresh(self) -> bool:
        """A new or empty folder: a run may start in it, and a failed start leaves it as it was."""
        return not self.path.exists() or self.path.is_dir() and not any(self.path.iterdir())

    def foreign_entries(self) -> list[str]:
        """The entries at the top of the folder that no run writes (RUN_ENTRIES)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in RUN_ENTRIES and not is_temporary(p.name, RUN_ENTRIES))

    def progressed(self) -> list[str]:
        """What shows that the run saved an epoch: files a run writes only once epoch 1's last.pt has landed
        (metrics.csv, summary.json), and checkpoints or snapshots of a later epoch."""
        found = [name for name in ("metrics.csv", "summary.json") if (self.path / name).exists()]
        for folder in (self.checkpoints, self.snapshots):
            later = [p for p in sorted(folder.glob("*epoch_*.pt")) if not p.stem.endswith("epoch_001")]
            found += [str(p.relative_to(self.path)) for p in later[:2]]
        return found

    def remove_contents(self, keep_folder: bool) -> None:
        """After a failed start in a fresh folder: the folder as it was (removed, or emptied when the user
        made it)."""
        if not keep_folder:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in list(self.path.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

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
