"""`dlcv demo`: the report's experiments, scaled down to minutes on a 2-core CPU, on built-in data.

P1 (classification), P2 (BYOL, a supervised backbone, settings A-E) and P3 (segmentation), then the
report (report.html and its Markdown twin) built from the runs. Every experiment is a shipped recipe
plus overrides, run through the same engine as a full run, so the demo exercises exactly the code a
user's real run does.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path

from dlcv import config as config_mod, task_registry
from dlcv.contracts.backbone import export_backbone
from dlcv.data.labels import write_csv
from dlcv.data.synth import write_tree
from dlcv.engine.run import read_summary
from dlcv.errors import DlcvError
from dlcv.fileio import DirectoryLock, write_text
from dlcv.pipelines import fit_or_reuse, transfer
from dlcv.report.build import build_report

log = logging.getLogger("dlcv")

# (task, problem folder, run name, recipe, what it shows, overrides at demo scale)
EXPERIMENTS = [
    # model A at 96 images and lr 1e-4 predicted one class for everything; at all 400 images and lr 1e-3
    # it learns visibly in 4 epochs (measured: val acc 0.15, 0.19, 0.25, 0.27; chance 0.10; 48 s on the
    # AMX CPU in bf16, ~3 min in fp32 on an AVX2-only 2-core CPU)
    ("classify", "p1_data", "p1_model_a", "p1_model_a", "report's model A: ResNet-50 from scratch, Adam (scaled: 4 epochs, 400 images, lr 1e-3)",
     ["train.epochs=4", "optim.lr=1e-3", "snapshot.epochs=[1, 2, 4]", "train.eval_batch_size=100",
      "data.limit_train=400"]),
    ("classify", "p1_data", "p1_model_b_lite0", "p1_model_b", "model B scaled: ImageNet-pretrained EfficientNet-Lite0 (offline weights), "
     "64 px input, the report's augmentation and step schedule, lr 1e-3 (3 epochs, 160 images)",
     ["model.name=efficientnet_lite0", "model.weights=imagenet", "model.options={dropout: 0.2}",
      "data.input_size=64", "augment.crop_padding=4", "optim.lr=1e-3", "sched.milestones=[2]",
      "train.epochs=3", "train.batch_size=16", "data.limit_train=160"]),
    ("classify", "p1_data", "p1_fast", "p1_fast", "our earlier from-scratch recipe: cifar_convnet, SGD + one-cycle "
     "(8 epochs, all images, lr 0.01 for the tiny set)",
     ["model.options={widths: [32, 64, 128]}", "optim.lr=0.01", "train.epochs=8", "train.batch_size=50"]),
    ("ssl", "p2_data", "p2_byol", "p2_byol", "our BYOL recipe on the unlabeled mini folder "
     "(scaled: ResNet-18, 32 px, projector 256 -> 64, 6 epochs)", ["model.name=resnet18", "data.image_size=32",
     "byol.projector_hidden=256", "byol.projector_dim=64", "train.epochs=6", "train.batch_size=32", "optim.lr=0.05",
     "sched.warmup_epochs=1"]),
    ("classify", "p2_data", "p2_supervised", "p2_supervised",
     "supervised backbone on the mini labels (settings B/D; scaled: ResNet-18, 32 px, 6 epochs)",
     ["model.name=resnet18", "data.image_size=32", "train.epochs=6", "train.batch_size=32", "optim.lr=0.05",
      "sched.warmup_epochs=1", "snapshot.epochs=[6]"]),
    ("segment", "p3_data", "p3_model_a", "p3_model_a",
     "report's model A: VGG16-FCN32s (no download: random init, fc6/fc7 64 wide; 3 epochs on 128 px tiles)",
     ["model.weights=null", "model.options={fc_channels: 64}", "optim.lr=1e-3", "train.epochs=3",
      "train.batch_size=4"]),
    ("segment", "p3_data", "p3_model_b", "p3_model_b",
     "report's model B: FCN-ResNet50 (no download: random init; 3 epochs on 128 px tiles)",
     ["model.weights=null", "optim.lr=1e-3", "train.epochs=3", "train.batch_size=4"]),
    ("segment", "p3_data", "p3_small", "p3_deeplab",
     "our augmentation and schedule on the CPU-sized fcn_small (8 epochs)",
     ["model.name=fcn_small", "model.options={width: 32}", "data.crop_size=null", "augment.scale=[0.7, 1.0]",
      "optim.lr=3e-3", "train.epochs=8", "train.batch_size=4"]),
]


# With --data (a real hw1_data tree) the same experiments run on slices of the real data about the size of
# the built-in set (P3 trains on 128 px crops of the 512 px tiles), so the budget stays the demo's.
REAL_DATA_SLICES = {
    "p1_data": ["data.limit_train=400", "data.limit_val=100"],
    "p2_data": ["data.limit_train=384"],  # BYOL's unlabeled images
    "p2_supervised": ["data.limit_train=1280", "data.limit_val=128"],  # ~20 images of each of 64 classes
    "p2_table": ["data.limit_train=720", "data.limit_val=180"],  # ~20 images of each of 36 classes
    "p3_data": ["data.limit_train=24", "data.limit_val=8", "data.crop_size=128"],
}


# what a demo writes into its --out folder (report.md's figures go to report_files/)
DEMO_ENTRIES = {"data", "runs", "results.csv", "results.md", "report.html", "report.md", "report_files", ".lock"}


def check_demo_folder(out: str | Path) -> None:
    """--out is new, empty or an earlier demo's folder (which the demo goes on with): never a folder of
    the user's files, among which it would write and replace its own."""
    out = Path(out)
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES
                     and not (p.name.startswith(".") and p.name.endswith(".tmp")))  # left by a killed write
    if foreign:
        raise DlcvError(f"--out {out} holds files the demo did not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")


def run_demo(out: str | Path, data: str | Path | None = None, device: str = "auto") -> list[dict]:
    with DirectoryLock(out):  # one demo per folder at a time
        return _run_demo(Path(out), data, device)


def _run_demo(out: Path, data: str | Path | None, device: str) -> list[dict]:
    real = data is not None
    if data is None:
        data = out / "data" / "hw1_data"
        if data.is_dir():  # written by an earlier, interrupted demo (the tree appears whole or not at all)
            log.info("reusing the synthetic data in %s", data)
        else:
            write_tree(out / "data", seed=0)
            log.info("synthetic data written to %s", data)
    data = Path(data)
    results = []
    for task, problem, run_name, recipe, what, overrides in EXPERIMENTS:
        log.info("== %s: %s", run_name, what)
        sets = [f"device={device}", *overrides]
        if real:
            sets += REAL_DATA_SLICES.get(run_name, REAL_DATA_SLICES[problem])
        entry = task_registry.task(task)
        module = entry.load()
        cfg = module.SCHEMA.resolve(config_mod.with_root(config_mod.load_yaml(recipe), data / problem), sets)
        summary = fit_or_reuse(module.TASK(cfg), cfg, out / "runs" / run_name)  # a rerun goes on where it stopped
        root_set = config_mod.set_item("data.root", str(data / problem))
        command = f"dlcv {entry.command} -c configs/{recipe}.yaml {config_mod.set_flags([root_set, *sets])}"
        results.append({"run": run_name, "what": what, "metric": summary.monitor,
                        "value": summary.best_value, "wall_s": summary.wall_time_s,
                        "command": command})
        if run_name == "p2_supervised":  # both P2 backbones exist now: the transfer table follows
            results += _transfer_table(out, data / "p2_data", device, REAL_DATA_SLICES["p2_table"] if real else [])
    rows = [(r["run"], r["metric"], _fmt(r["value"]), r["wall_s"], r["command"]) for r in results]
    write_csv(out / "results.csv", ["run", "metric", "best", "wall_s", "command"], rows)
    table = ["| run | what | metric | best | wall s |", "|---|---|---|---|---|"]
    table += [f"| {r['run']} | {r['what']} | {r['metric']} | {_fmt(r['value'])} | {r['wall_s']:.0f} |"
              for r in results]
    graded = graded_commands(out, data, results)
    write_text(out / "results.md", "\n".join([*table, "", "The graded scripts on the kept checkpoints:", "",
                                              "```bash", *graded.values(), "```"]) + "\n")
    build_report([out / "runs"], out / "report.html")
    freed, left = prune_checkpoints(out / "runs", set(graded))
    log.info("\n%s\nruns and figures under %s; the report: %s\ncheckpoints: %.0f MB deleted, %.0f MB kept for the "
             "graded scripts:\n%s", "\n".join(table), out / "runs", out / "report.html", freed / 1e6, left / 1e6,
             "\n".join(graded.values()))
    return results


# (graded script, its checkpoint variable, the demo runs that answer its problem, its arguments under hw1_data)
GRADED = (("hw1_1.sh", "DLCV_P1_CKPT", "p1_", ["p1_data/val_50", "p1_pred.csv"]),
          ("hw1_2.sh", "DLCV_P2_CKPT", "p2_setting_C", ["p2_data/office/val.csv", "p2_data/office/val",
                                                        "p2_pred.csv"]),
          ("hw1_3.sh", "DLCV_P3_CKPT", "p3_", ["p3_data/validation", "p3_masks"]))


def graded_commands(out: Path, data: Path, results: list[dict]) -> dict[Path, str]:
    """{checkpoint: command}: each graded script on the best run of its problem (P2: setting C, as the
    course asks)."""
    lines = {}
    for script, variable, prefix, args in GRADED:
        mine = [r for r in results if r["run"].startswith(prefix) and r["value"] is not None]
        best = max(mine, key=lambda r: r["value"], default=None)
        if best is None:
            continue
        run = out / "runs" / ("p2_table/setting_C" if prefix == "p2_setting_C" else best["run"])
        ckpt = run / "checkpoints" / "best.pt"
        lines[ckpt] = f"{variable}={ckpt} bash {script} {' '.join(str(data / a) if '/' in a else a for a in args)}"
    return lines


def prune_checkpoints(runs: Path, keep: set[Path]) -> tuple[int, int]:
    """Deletes the runs' checkpoints (last.pt, best.pt, the snapshot epochs' weights) but those in `keep`,
    once the report is drawn: the demo's figures and numbers are in its files, and its P2 backbone files
    stay. Returns the bytes deleted and kept."""
    freed = left = 0
    for ckpt in sorted(runs.rglob("checkpoints/*.pt")):
        size = ckpt.stat().st_size
        if ckpt in keep:
            left += size
        else:
            ckpt.unlink()
            freed += size
    return freed, left


def _fmt(value: float | None) -> str:
    """None: no epoch gave a finite value (e.g. mIoU on a tiny val set missing a class is NaN, as the
    official evaluator)."""
    return "n/a" if value is None else f"{value:.4f}"


# The A-E table at demo scale, on the two backbones trained above (the same recipe as `dlcv ssl table`).
TABLE_OVERRIDES = ["model.name=resnet18", "data.image_size=32", "train.epochs=4", "train.batch_size=32",
                   "snapshot.epochs=[4]"]


def _transfer_table(out: Path, p2_root: Path, device: str, slices: list[str]) -> list[dict]:
    runs = out / "runs"
    sl_backbone = runs / "p2_supervised" / "sl_backbone.pt"
    if not sl_backbone.is_file():  # a demo run again finds it (its checkpoint deleted: prune_checkpoints)
        export_backbone(runs / "p2_supervised" / "checkpoints" / "last.pt", sl_backbone)
    sets = [f"device={device}", *TABLE_OVERRIDES, *slices]
    ssl_backbone = runs / "p2_byol" / "backbone.pt"
    log.info("== p2 settings A-E on the office set")
    transfer.run_table(config_mod.with_root(config_mod.load_yaml("p2_finetune"), p2_root), sets, str(sl_backbone),
                       str(ssl_backbone), runs / "p2_table")
    command = (f"dlcv ssl table -c configs/p2_finetune.yaml --sl-backbone {shlex.quote(str(sl_backbone))} "
               f"--ssl-backbone {shlex.quote(str(ssl_backbone))} --out {shlex.quote(str(runs / 'p2_table'))} "
               f"{config_mod.set_flags([config_mod.set_item('data.root', str(p2_root)), *sets])}")
    results = []
    for setting, (_, pretraining, tuning) in transfer.SETTINGS.items():
        summary = read_summary(runs / "p2_table" / f"setting_{setting}")
        results.append({"run": f"p2_setting_{setting}", "what": f"setting {setting}: {pretraining}, {tuning}",
                        "metric": "val_acc (final)", "value": summary.final["val_acc"],
                        "wall_s": summary.wall_time_s,
                        "command": command})
    return results
