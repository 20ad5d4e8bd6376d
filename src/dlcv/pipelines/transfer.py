"""P2's transfer settings A-E: classification runs of one architecture from random weights, a supervised
or a BYOL backbone, fine-tuned whole or with the backbone frozen, and the report's table of them."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dlcv.data import labels as labels_mod
from dlcv.engine import identity
from dlcv.engine.run import RunDir, is_temporary
from dlcv.errors import DlcvError
from dlcv.fileio import DirectoryLock, refuse_special_file, starts_with, write_text
from dlcv.pipelines import fit_or_reuse
from dlcv.tasks import classify, fill_model_defaults

log = logging.getLogger("dlcv")

SETTINGS = {  # setting: (backbone source, pre-training, fine-tuning)
    "A": (None, "none (random init)", "full model"),
    "B": ("sl", "supervised", "full model"),
    "C": ("ssl", "BYOL (ours)", "full model"),
    "D": ("sl", "supervised", "backbone frozen, classifier only"),
    "E": ("ssl", "BYOL (ours)", "backbone frozen, classifier only"),
}


def setting_overrides(setting: str, backbone: str | None) -> list[str]:
    """The config overrides that turn the shared fine-tuning recipe into setting A-E."""
    source, _, tuning = SETTINGS[setting]
    if source is not None and backbone is None:
        raise DlcvError(f"setting {setting} needs a {'supervised' if source == 'sl' else 'BYOL'} backbone file "
                        "(--backbone PATH, or --sl-backbone / --ssl-backbone for `ssl table`)")
    frozen = tuning.startswith("backbone frozen")
    return [f"model.weights={json.dumps(backbone) if source else 'null'}",
            f"model.options.freeze_backbone={str(frozen).lower()}"]


def finetune_config(recipe: dict, overrides: list[str], setting: str, backbone: str | None) -> dict:
    return classify.SCHEMA.resolve(recipe, [*overrides, *setting_overrides(setting, backbone)])


CSV_HEADER = ["setting", "pre-training", "fine-tuning", "val_acc", "best_val_acc", "best_epoch", "run"]
MD_HEADER = "| setting | pre-training | fine-tuning | val accuracy (final) | best (epoch) |"
# what `ssl table` writes into its --out folder; a folder holding anything else is the user's
TABLE_ENTRIES = {*(f"setting_{s}" for s in SETTINGS), "table.md", "table.csv", ".lock"}


def check_table_folder(out: Path, settings: str) -> None:
    """Before any run: --out is new, empty or a table folder of dlcv's (its first lines tell its table.md and
    table.csv from a user's own), and each setting's folder one a run may go on in (RunDir.check)."""
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in TABLE_ENTRIES and not is_temporary(p.name, TABLE_ENTRIES))
    if foreign:
        raise DlcvError(f"--out {out} holds files `ssl table` does not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")
    for name, first in (("table.md", MD_HEADER), ("table.csv", ",".join(CSV_HEADER))):
        refuse_special_file(out / name, "--out's")
        if (out / name).exists() and not starts_with(out / name, first + "\n"):
            raise DlcvError(f"--out {out} holds a {name} that `ssl table` did not write: it would be replaced; give "
                            "a new or empty folder")
    for setting in settings:
        RunDir(out / f"setting_{setting}", True).check(resume=True)


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> str:
    labels_mod.write_csv(out_dir / "table.csv", CSV_HEADER, [[r[h] for h in CSV_HEADER] for r in rows])
    lines = [MD_HEADER, "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['pre-training']} | {r['fine-tuning']} | {r['val_acc']:.4f} | "
              f"{r['best_val_acc']:.4f} ({r['best_epoch']}) |" for r in rows]
    text = "\n".join(lines) + "\n"
    write_text(out_dir / "table.md", text)
    return text


def run_table(recipe: dict, overrides: list[str], sl_backbone: str | None, ssl_backbone: str | None,
              out_dir: Path, settings: str = "ABCDE") -> str:
    """Runs the settings one after another into OUT/setting_X and writes the report's table."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown or not settings:
        raise DlcvError(f"--settings {settings!r}: use letters of ABCDE "
                        f"(unknown: {', '.join(unknown) or 'none given'})")
    check_table_folder(out_dir, settings)
    with DirectoryLock(out_dir):  # one `ssl table` per folder at a time
        backbones = {setting: {"sl": sl_backbone, "ssl": ssl_backbone, None: None}[SETTINGS[setting][0]]
                     for setting in settings}
        cfgs = {setting: fill_model_defaults(finetune_config(recipe, overrides, setting, backbones[setting]))
                for setting in settings}  # as the task fills them in: the runs' config.yaml hold the mean / std
        for setting, cfg in cfgs.items():  # every setting's refusal (a missing backbone, another run's folder)
            identity.check_pipeline_run(out_dir / f"setting_{setting}", cfg)  # before any of them trains
        rows = []
        for setting, cfg in cfgs.items():
            _, pretraining, tuning = SETTINGS[setting]
            backbone = backbones[setting]
            log.info("== setting %s: %s pre-training, %s", setting, pretraining, tuning)
            summary = fit_or_reuse(classify.ClassifyTask(cfg), cfg, out_dir / f"setting_{setting}")
            rows.append({"setting": setting, "pre-training": pretraining + (f" ({backbone})" if backbone else ""),
                         "fine-tuning": tuning, "val_acc": summary.final["val_acc"],
                         "best_val_acc": summary.best_value, "best_epoch": summary.best_epoch,
                         "run": str(out_dir / f"setting_{setting}")})
        return write_table(rows, out_dir)
