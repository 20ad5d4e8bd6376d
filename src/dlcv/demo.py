"""`dlcv demo`: the report's experiments, scaled down to minutes on a laptop CPU, on built-in data.

For now P1 (classification) and P3 (segmentation); P2 and the report join as they land. Every experiment
is a shipped recipe plus overrides, run through the same engine as a full run, so the demo exercises
exactly the code a user's real run does.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dlcv import config as config_mod
from dlcv.data.labels import write_csv
from dlcv.data.synth import write_tree
from dlcv.engine.trainer import Trainer
from dlcv.fileio import write_text
from dlcv.tasks import classify, segment

log = logging.getLogger("dlcv")

# (task module, task class, problem folder, run name, recipe, what it shows, overrides at demo scale)
EXPERIMENTS = [
    (classify, classify.ClassifyTask, "p1_data", "p1_model_a", "p1_model_a", "report's model A: ResNet-50 from scratch, Adam 1e-4 (scaled: 3 epochs, 96 images)",
     ["train.epochs=3", "data.limit_train=96", "snapshot.epochs=[1, 2, 3]", "train.eval_batch_size=100"]),
    (classify, classify.ClassifyTask, "p1_data", "p1_model_b_lite0", "p1_model_b", "model B scaled: ImageNet-pretrained EfficientNet-Lite0 (offline weights), "
     "64 px input, the report's augmentation and step schedule, lr 1e-3 (3 epochs, 160 images)",
     ["model.name=efficientnet_lite0", "model.weights=imagenet", "model.options={dropout: 0.2}",
      "data.input_size=64", "augment.crop_padding=4", "optim.lr=1e-3", "sched.milestones=[2]",
      "train.epochs=3", "train.batch_size=16", "data.limit_train=160"]),
    (classify, classify.ClassifyTask, "p1_data", "p1_fast", "p1_fast", "our from-scratch recipe: airbench-style convnet, SGD + one-cycle "
     "(8 epochs, all images, lr 0.01 for the tiny set)",
     ["model.options={widths: [32, 64, 128]}", "optim.lr=0.01", "train.epochs=8", "train.batch_size=50"]),
    (segment, segment.SegmentTask, "p3_data", "p3_model_a", "p3_model_a",
     "report's model A: VGG16-FCN32s (no download: random init, fc6/fc7 64 wide; 3 epochs on 128 px tiles)",
     ["model.weights=null", "model.options={fc_channels: 64}", "optim.lr=1e-3", "train.epochs=3",
      "train.batch_size=4"]),
    (segment, segment.SegmentTask, "p3_data", "p3_model_b", "p3_model_b",
     "report's model B: FCN-ResNet50 (no download: random init; 3 epochs on 128 px tiles)",
     ["model.weights=null", "optim.lr=1e-3", "train.epochs=3", "train.batch_size=4"]),
    (segment, segment.SegmentTask, "p3_data", "p3_small", "p3_deeplab",
     "our augmentation and schedule on the CPU-sized fcn_small (8 epochs)",
     ["model.name=fcn_small", "model.options={width: 32}", "data.crop_size=null", "augment.scale=[0.7, 1.0]",
      "optim.lr=3e-3", "train.epochs=8", "train.batch_size=4"]),
]


def run_demo(out: str | Path, data: str | Path | None = None, device: str = "auto") -> list[dict]:
    out = Path(out)
    if data is None:
        data = write_tree(out / "data", seed=0)
        log.info("synthetic data written to %s", data)
    data = Path(data)
    results = []
    for task_module, task_cls, problem, run_name, recipe, what, overrides in EXPERIMENTS:
        log.info("== %s: %s", run_name, what)
        sets = [f"data.root={data / problem}", f"device={device}", *overrides]
        cfg = config_mod.resolve(task_module.DEFAULTS, task_module.choices(), task_module.TYPES,
                                 config_mod.load_yaml(recipe), sets)
        summary = Trainer(task_cls(cfg), cfg, out / "runs" / run_name).fit()
        command = f"dlcv {cfg['task']} train -c configs/{recipe}.yaml " + " ".join(f"--set '{s}'" for s in sets)
        results.append({"run": run_name, "what": what, "metric": summary["monitor"],
                        "value": summary["best"][summary["monitor"]], "wall_s": summary["wall_time_s"],
                        "command": command})
    rows = [(r["run"], r["metric"], f"{r['value']:.4f}", r["wall_s"], r["command"]) for r in results]
    write_csv(out / "results.csv", ["run", "metric", "best", "wall_s", "command"], rows)
    table = ["| run | what | metric | best | wall s |", "|---|---|---|---|---|"]
    table += [f"| {r['run']} | {r['what']} | {r['metric']} | {r['value']:.4f} | {r['wall_s']:.0f} |"
              for r in results]
    write_text(out / "results.md", "\n".join(table) + "\n")
    log.info("\n%s\nruns, figures and checkpoints under %s", "\n".join(table), out / "runs")
    return results
