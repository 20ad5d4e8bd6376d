"""Time to accuracy on P1: the report's model-A recipe and ours, each for the same wall time on this
machine, one after the other in one invocation; prints JSON.

    .venv/bin/python benchmarks/time_to_accuracy.py --data ../shared/data/hw1_data/p1_data --minutes 10 \
        --out benchmarks/results/time_to_accuracy.json

Each recipe runs as `dlcv classify train` with `train.max_seconds` = the budget (the epoch the budget
ends in stops early and is evaluated). Reported per recipe: validation accuracy after every epoch with
the cumulative training seconds, the accuracy when the budget ended, the process's wall time; and ours'
time to reach the report's final accuracy (0.2904). Our recipe is sized to the budget with `--ours-set`
(its one-cycle schedule must end inside it: default 16 epochs of p1_cpu for 10 minutes).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT_ACCURACY = 0.2904  # the report's model A, after ~20 epochs


def run_recipe(recipe: str, data: Path, seconds: float, sets: list[str], out: Path) -> dict:
    from dlcv.config import set_args, set_item
    from dlcv.engine.run import read_summary
    command = [sys.executable, "-m", "dlcv", "classify", "train", "-c", recipe, "--out", str(out),
               *set_args([set_item("data.root", str(data)), f"train.max_seconds={seconds}", *sets])]
    tic = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - tic
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    elapsed, curve = 0.0, []
    for r in rows:
        elapsed += float(r["seconds"])
        curve.append({"epoch": int(r["epoch"]), "train_s": round(elapsed, 1), "val_acc": float(r["val_acc"])})
    reached = next((c["train_s"] for c in curve if c["val_acc"] >= REPORT_ACCURACY), None)
    env = read_summary(out).environment
    return {"command": "dlcv " + " ".join(command[3:]), "wall_s": round(wall, 1), "curve": curve,
            "val_acc_at_budget": curve[-1]["val_acc"] if curve else None,
            "train_s_to_report_accuracy": reached, "precision": env["precision"],
            "cpu": env.get("cpu"), "cpu_native_bf16": env.get("cpu_native_bf16")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the p1_data folder")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget of each recipe")
    p.add_argument("--report-recipe", default="p1_model_a")
    p.add_argument("--report-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ours", default="p1_cpu")
    p.add_argument("--ours-set", action="append", default=None, metavar="KEY=VALUE",
                   help="default: train.epochs=16 and snapshots at 1 and 16 (fits 10 minutes)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    ours_sets = args.ours_set if args.ours_set is not None else ["train.epochs=16", "snapshot.epochs=[1, 16]"]
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        result = {"budget_s": seconds, "report_accuracy": REPORT_ACCURACY,
                  "report_recipe": run_recipe(args.report_recipe, Path(args.data).resolve(), seconds,
                                              args.report_set, Path(tmp) / "report"),
                  "ours": run_recipe(args.ours, Path(args.data).resolve(), seconds, ours_sets, Path(tmp) / "ours")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from dlcv.fileio import write_text
        write_text(args.out, text + "\n")
    return 0 if "error" not in result["report_recipe"] and "error" not in result["ours"] else 1


if __name__ == "__main__":
    sys.exit(main())
