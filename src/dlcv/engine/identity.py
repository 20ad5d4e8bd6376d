"""Whether an existing run may go on (--resume) or be reused (`ssl table`, `demo`) for a command: what
defines its result must match, i.e. the resolved config, the data's identity (what the task read: the
number of training samples, the class names) and the content of its model.weights file (sha256).
Anything else is refused with one line naming the difference and how to start afresh."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from dlcv import config as config_mod
from dlcv.engine.run import read_summary
from dlcv.errors import DlcvError

# How a run is driven, not what it computes: free to differ on resume and reuse.
RUNTIME_KEYS = ("device", "train.precision", "train.channels_last", "train.compile", "train.log_every",
                "train.eval_batch_size", "data.cache_dir", "snapshot")
# A run's length: a reused run whose length grows is resumed to the new end (never shortened).
LENGTH_KEYS = ("train.epochs", "train.max_steps", "train.max_seconds")
# What --resume applies from the next step on (logged): the length, the optimizer's hyperparameters (the
# loop puts the config's values into the optimizer, engine/optim.py), the schedule (recomputed from the
# config at every step), when to validate, and data.root where the data's identity is unchanged (moved data).
RESUMABLE_KEYS = (*LENGTH_KEYS, "train.eval_every", "train.grad_clip", "optim.lr", "optim.weight_decay",
                  "optim.momentum", "optim.nesterov", "optim.betas", "optim.lr_mult", "sched", "data.root")


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of a nested mapping (an empty mapping has none)."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out = {}
    for key, value in cfg.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changes(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} where the configs differ, keys under `ignore` left out. A schema
    key the old config lacks is one its dlcv did not have yet (its default keeps the old behaviour), so it
    is not compared; keys under the free-form mappings (model.options) always are."""
    a, b = flatten(old), flatten(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if not _under(k, ignore)
            and (k in a or _under(k, tuple(config_mod.FREE_FORM)))]
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def describe(diff: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    shown = [f"{k} {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:limit]]
    return "; ".join(shown) + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


def weights_sha256(weights: str | None) -> str | None:
    """The sha256 of a model.weights file (None for no weights or a torchvision weight name)."""
    if weights is None or not Path(weights).is_file():
        return None
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _afresh(run_dir: Path) -> str:
    return f"to start afresh, delete {run_dir} or pick another output folder"


def check_resume(run_dir: Path, saved: dict, cfg: dict) -> str:
    """--resume: refuses a change of anything but RUNTIME_KEYS / RESUMABLE_KEYS. Returns the resumable
    changes for the log ("" for none; optimizer ones are logged per parameter group by the loop)."""
    refused = changes(saved, cfg, (*RUNTIME_KEYS, *RESUMABLE_KEYS))
    if refused:
        raise DlcvError(f"--resume: {run_dir} was made with other settings ({describe(refused)}); a resumed run "
                        f"keeps them; {_afresh(run_dir)}")
    applied = changes(saved, cfg, (*RUNTIME_KEYS, "optim"))
    return describe(applied, limit=len(applied))


def check_inputs(run_dir: Path, saved: dict | None, inputs: dict) -> None:
    """After the data is read: the data's identity and the weights file's hash must be the run's (runs
    made before dlcv recorded them have nothing to compare)."""
    if not saved:
        return
    diff = {k: (saved.get(k), v) for k, v in inputs.items() if k in saved and saved[k] != v}
    if diff:
        what = "; ".join(f"{k}: {_short(old)} -> {_short(new)}" for k, (old, new) in diff.items())
        raise DlcvError(f"{run_dir} was made from other inputs ({what}); {_afresh(run_dir)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_pipeline_run(run_dir: Path, cfg: dict) -> bool:
    """For pipelines (`ssl table`, `demo`), before reusing or resuming the run in `run_dir`: its saved config
    and weights file must be `cfg`'s up to RUNTIME_KEYS and a longer run (which resumes); anything else is
    refused. Returns whether the run must train on (it is longer now); False for a folder without a run."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return False
    saved = config_mod.load_yaml(saved_path)
    if cfg["train"]["epochs"] == "auto" and _planned(run_dir):  # its config.yaml holds the epochs it planned
        cfg = config_mod.deep_merge(cfg, {"train": {"epochs": saved.get("train", {}).get("epochs")}})
    diff = changes(saved, cfg, RUNTIME_KEYS)
    longer = {k: v for k, v in diff.items() if _under(k, LENGTH_KEYS) and _longer(*v)}
    refused = {k: v for k, v in diff.items() if k not in longer}
    if refused:
        raise DlcvError(f"{run_dir} holds a run made with other settings ({describe(refused)}); reusing it would "
                        f"mislabel its result; {_afresh(run_dir)}")
    if (run_dir / "summary.json").is_file():
        recorded = read_summary(run_dir).inputs.get("weights_sha256")
        if recorded is not None and recorded != weights_sha256(cfg["model"]["weights"]):
            raise DlcvError(f"{run_dir} was trained from another {cfg['model']['weights']} (its sha256 changed "
                            f"since); {_afresh(run_dir)}")
    return bool(longer)


def _planned(run_dir: Path) -> bool:
    """Whether the run in `run_dir` chose its epochs with train.epochs=auto (its summary records the plan), or
    saved no epoch yet (nothing of it is reused: it starts over, planning again)."""
    if not (run_dir / "summary.json").is_file():
        return True
    return "epoch_plan" in read_summary(run_dir).environment


def _longer(old: Any, new: Any) -> bool:
    """A length key's new value extends the run: a larger number, or no limit where there was one (`auto`
    against a number is another length, not a longer one)."""
    if new is None:
        return True
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    return numbers and new > old
