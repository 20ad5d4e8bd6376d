"""Training speed with a split streamed from disk against held in memory, and one epoch of a set larger than
a memory budget, printed as JSON lines.

    .venv/bin/python benchmarks/streaming.py --data ../shared/data/hw1_data --out benchmarks/results/streaming_cpu.jsonl
    .venv/bin/python benchmarks/streaming.py --cases big --big-images 50000 --big-size 128 --budget-gb 1

Output: JSON lines, on stdout and appended to --out, each the moment it is measured: first the machine, then
one line per run, then one line per case with the ratio streamed / in memory.

Cases: `p1` the p1_fast recipe (cifar_convnet) on the course's 32 px P1 images; `p3` the p3_cpu recipe with
fcn_small on 256 px crops of the course's 512 px P3 tiles; `big` a synthetic class-folder set of --big-images
JPEGs at --big-size px (written once under --big-dir), trained for one epoch with data.in_memory=auto under a
memory budget of --budget-gb: the decoded set does not fit, so dlcv streams it; its peak RSS (and its largest
DataLoader worker's) shows what streaming holds.

Each run is its own process (clean peak memory) through the real engine (dlcv.engine.Trainer), timed inside
the loop as benchmarks/speed.py times it: per step from the request for a batch to the end of the optimizer
step, and the part spent waiting for the batch; the first --warmup steps (DataLoader start-up) apart. The
in-memory run reads the decoded split from dlcv's cache ($DLCV_CACHE), which its first run fills.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import speed  # noqa: E402  (the timing of speed.py: TimedTask, summarise, peak_memory, emit)

# case -> (task, recipe, data folder under --data, (batch, timed steps, warm-up steps) on a CPU, --set values)
CASES = {
    "p1": ("classify", "p1_fast", "p1_data", (256, 20, 3), {"data.limit_val": 256}),
    "p3": ("segment", "p3_cpu", "p3_data", (8, 6, 2),
           {"model.name": "fcn_small", "model.options": {"width": 32}, "model.weights": None, "data.limit_train": 128,
            "data.limit_val": 2}),
    "big": ("classify", "p1_fast", None, (256, None, 3), {"data.limit_val": 256}),
}
VARIANTS = {"memory": True, "stream": False}  # data.in_memory


def resolve_config(spec: dict) -> dict:
    from dlcv import config
    from dlcv.tasks import classify, fill_model_defaults, segment
    task, recipe, _, _, sets = CASES[spec["case"]]
    values = {"device": spec["device"], "train.batch_size": spec["batch"], "train.eval_batch_size": spec["batch"],
              "train.epochs": 1, "train.max_steps": spec["max_steps"], "snapshot.epochs": [10_000],
              "data.in_memory": spec["in_memory"], "data.workers": spec["workers"], **sets, **spec["sets"]}
    module = classify if task == "classify" else segment
    recipe = config.with_root(config.load_yaml(recipe), spec["root"])
    return fill_model_defaults(module.SCHEMA.resolve(recipe, [config.set_item(k, v) for k, v in values.items()]))


def worker(spec: dict) -> dict:
    """One measured run (in its own process)."""
    import torch

    from dlcv.data import sources
    from dlcv.engine.distributed import pick_device
    from dlcv.engine.trainer import Trainer
    from dlcv.tasks import classify, segment
    if spec["budget_bytes"] is not None:  # the memory budget this run may decode into
        sources.fits_in_memory = lambda nbytes: nbytes <= spec["budget_bytes"]
    device = pick_device(spec["device"])
    sync = speed.make_sync(device)
    cfg = resolve_config(spec)
    task = (classify.ClassifyTask if CASES[spec["case"]][0] == "classify" else segment.SegmentTask)(cfg)
    timed = speed.TimedTask(task, sync)
    tic = time.perf_counter()
    Trainer(timed, cfg, spec["run_dir"]).fit()
    result = speed.summarise(timed.step_s, timed.data_s, [x.item() for x in timed.losses], spec["warmup"],
                             spec["batch"])
    result.update(speed.peak_memory(device, workers=not task.train_x.in_memory), setup_s=round(timed.setup_s, 2),
                  total_s=round(time.perf_counter() - tic, 1), in_memory=task.train_x.in_memory,
                  workers=task.train_x.workers, train_images=len(task.train_x),
                  torch_threads=torch.get_num_threads())
    return result


def write_big_set(folder: Path, images: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """ROOT/train/<class>/*.jpg (+ a small val/): smooth random colour fields, a hue per class. Written once:
    an existing complete set of the same shape is reused."""
    from PIL import Image
    marker = folder / f"complete_{images}_{size}"
    if marker.is_file():
        return folder
    rng = np.random.default_rng(seed)
    hues = rng.integers(0, 256, (classes, 3))
    for split, count in (("train", images), ("val", max(classes, images // 50))):
        for i in range(count):
            label = i % classes
            out = folder / split / f"class {label}"
            out.mkdir(parents=True, exist_ok=True)
            field = np.clip(hues[label] + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(field).resize((size, size), Image.BILINEAR).save(out / f"{i:06d}.jpg", quality=90)
    marker.write_text("")
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(BENCH_DIR.parent.parent / "shared" / "data" / "hw1_data"),
                   help="the hw1_data folder (default ../shared/data/hw1_data), for the p1 and p3 cases")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch", nargs="*", default=[], metavar="CASE=N", help="batch size per case")
    p.add_argument("--steps", type=int, help="timed steps of the p1 / p3 cases (big: its whole epoch)")
    p.add_argument("--warmup", type=int, help="warm-up steps of every case")
    p.add_argument("--workers", type=int, default=None, help="data.workers of the streamed runs (default: auto)")
    p.add_argument("--big-images", type=int, default=50_000)
    p.add_argument("--big-size", type=int, default=128)
    p.add_argument("--big-dir", help="where the big set is written once (default: a temporary folder)")
    p.add_argument("--budget-gb", type=float, default=1.0, help="the memory budget of the big case")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    from dlcv.engine.distributed import pick_device
    from dlcv.engine.run import environment
    device = pick_device(args.device)
    batches = speed.parse_pairs(args.batch, int)
    out = Path(args.out) if args.out else None
    speed.emit({"command": " ".join([Path(sys.executable).name, *sys.argv]), "data": args.data,
                "environment": environment(device, 1)}, out)
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            _, _, folder, (b, s, w), _ = CASES[case]
            b, w = batches.get(case, b), w if args.warmup is None else args.warmup
            base = {"case": case, "device": device.type, "batch": b, "warmup": w, "sets": {}, "workers": args.workers}
            if case == "big":
                big = Path(args.big_dir) if args.big_dir else Path(scratch) / "big"
                tic = time.perf_counter()
                root = write_big_set(big, args.big_images, args.big_size)
                print(f"[streaming] big set of {args.big_images} images at {args.big_size} px ready in "
                      f"{time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
                budget = int(args.budget_gb * 2 ** 30)
                spec = {**base, "root": str(root), "max_steps": None, "in_memory": "auto", "budget_bytes": budget,
                        "sets": {"data.image_size": args.big_size}, "run_dir": f"{scratch}/big_run"}
                result = speed.spawn(spec, __file__)
                decoded_gb = args.big_images * 3 * args.big_size ** 2 / 2 ** 30
                speed.emit({"case": case, "variant": "auto", "images": args.big_images, "size": args.big_size,
                            "decoded_gb": round(decoded_gb, 2), "budget_gb": args.budget_gb, "batch": b, "warmup": w,
                            **result}, out)
                continue
            s = s if args.steps is None else args.steps
            results = {}
            for variant, in_memory in VARIANTS.items():
                print(f"[streaming] {case} {variant}: batch {b}, {w} warm-up + {s} timed steps", file=sys.stderr,
                      flush=True)
                results[variant] = speed.spawn({**base, "root": str(Path(args.data) / folder), "max_steps": w + s,
                                          "in_memory": in_memory, "budget_bytes": None,
                                          "run_dir": f"{scratch}/{case}_{variant}"}, __file__)
                speed.emit({"case": case, "variant": variant, "steps": s, **base, **results[variant]}, out)
            rates = {v: r.get("images_per_s") for v, r in results.items()}
            summary = {"images_per_s": rates}
            if all(rates.values()):
                summary["ratio_stream_over_memory"] = round(rates["stream"] / rates["memory"], 3)
            speed.emit({"case": case, "summary": summary}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
