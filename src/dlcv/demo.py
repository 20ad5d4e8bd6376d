"""`dlcv demo`: the report's experiments, scaled down to minutes on a laptop CPU, on built-in data.

For now P1 (the classification problem); P2, P3 and the report join as they land. Every experiment is a
shipped recipe plus overrides, run through the same engine as a full run, so the demo exercises exactly
the code a user's real run does.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dlcv import config as config_mod
from dlcv.data.labels import write_csv
from dlcv.data.synth import write_tree
from dlcv.engine.trainer import Trainer
from dlcv.fileio import write_text
from dlcv.tasks import classify

log = logging.getLogger("dlcv")

# (run name, recipe, what it shows, overrides at demo scale)
P1_EXPERIMENTS = [
    ("p1_model_a", "p1_model_a", "report's model A: ResNet-50 from scratch, Adam 1e-4 (scaled: 3 epochs, 96 images)",
     ["train.epochs=3", "data.limit_train=96", "snapshot.epochs=[1, 2, 3]", "train.eval_batch_size=100"]),
    ("p1_model_b_lite0", "p1_model_b", "model B scaled: ImageNet-pretrained EfficientNet-Lite0 (offline weights), "
     "64 px input, the report's augmentation and step schedule, lr 1e-3 (3 epochs, 160 images)",
     ["model.name=efficientnet_lite0", "model.weights=imagenet", "model.options={dropout: 0.2}",
      "data.input_size=64", "augment.crop_padding=4", "optim.lr=1e-3", "sched.milestones=[2]",
      "train.epochs=3", "train.batch_size=16", "data.limit_train=160"]),
    ("p1_fast", "p1_fast", "our from-scratch recipe: airbench-style convnet, SGD + one-cycle "
     "(8 epochs, all images, lr 0.01 for the tiny set)",
     ["model.options={widths: [32, 64, 128]}", "optim.lr=0.01", "train.epochs=8", "train.batch_size=50"]),
]


def run_demo(out: str | Path, data: str | Path | None = None, device: str = "auto") -> list[dict]:
    out = Path(out)
    if data is None:
        data = write_tree(out / "data", seed=0)
        log.info("synthetic data written to %s", data)
    data = Path(data)
    results = []
    for run_name, recipe, what, overrides in P1_EXPERIMENTS:
        log.info("== P1 %s: %s", run_name, what)
        sets = [f"data.root={data / 'p1_data'}", f"device={device}", *overrides]
        cfg = config_mod.resolve(classify.DEFAULTS, classify.choices(), classify.TYPES,
                                 config_mod.load_yaml(recipe), sets)
        summary = Trainer(classify.ClassifyTask(cfg), cfg, out / "runs" / run_name).fit()
        command = f"dlcv classify train -c configs/{recipe}.yaml " + " ".join(f"--set '{s}'" for s in sets)
        results.append({"run": run_name, "what": what, "val_acc": summary["best"]["val_acc"],
                        "wall_s": summary["wall_time_s"], "command": command})
    rows = [(r["run"], f"{r['val_acc']:.4f}", r["wall_s"], r["command"]) for r in results]
    write_csv(out / "results.csv", ["run", "val_acc", "wall_s", "command"], rows)
    table = ["| run | what | best val acc | wall s |", "|---|---|---|---|"]
    table += [f"| {r['run']} | {r['what']} | {r['val_acc']:.4f} | {r['wall_s']:.0f} |" for r in results]
    write_text(out / "results.md", "\n".join(table) + "\n")
    log.info("\n%s\nruns, figures and checkpoints under %s", "\n".join(table), out / "runs")
    return results
