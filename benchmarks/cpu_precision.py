"""Training images/s of each registered model in fp32 and under bf16 autocast on this CPU, as JSON: the
evidence behind `train.precision: auto` on CPUs (engine/precision.py resolve_precision).

    .venv/bin/python benchmarks/cpu_precision.py --out benchmarks/results/cpu_precision.json
    .venv/bin/python benchmarks/cpu_precision.py --models cifar_convnet resnet50_cifar --steps 20

One optimizer step = forward, backward and SGD step on random inputs of the model's recipe size, in the
layout `train.channels_last: auto` picks. fp32 and bf16 runs are interleaved (`--repeat`, median kept),
since a shared VM drifts by 10-20% over minutes; each run is its own process, so a crash inside a kernel
is recorded as an error. The CPU (model name, ISA, native bf16) is recorded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import report_json  # benchmarks/report_json.py: machine + JSON output

BENCH_DIR = Path(__file__).resolve().parent

# model -> (input side, batch, num_classes): the sizes its CPU recipes train at
CASES = {
    "cifar_convnet": (32, 256, 50, {"widths": [64, 256, 256]}),
    "resnet50_cifar": (32, 32, 50, {}),
    "resnet18": (64, 64, 36, {}),
    "resnet50": (128, 16, 36, {}),
    "fcn_small": (256, 8, 7, {"width": 32}),
    "lite0_deeplab": (256, 8, 7, {}),
    "fcn32s_vgg16": (512, 2, 7, {}),
    "efficientnet_lite0": (64, 64, 50, {}),
}


def images_per_s(name: str, precision: str, steps: int, warmup: int) -> float:
    from dlcv.engine.precision import resolve_channels_last
    from dlcv.models import create_model, model_spec

    side, batch, classes, options = CASES[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, weights=None, **options)
    channels_last = resolve_channels_last("auto", torch.device("cpu"), model_spec(name).cpu_channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch, side, side) if side >= 256 else (batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for i in range(warmup + steps):
        if i == warmup:
            tic = time.perf_counter()
        with autocast:
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * steps / (time.perf_counter() - tic)


def one_run(name: str, precision: str, steps: int, warmup: int) -> float | str:
    """In its own process: a crash (e.g. a heap corruption inside a bf16 kernel) is recorded, not fatal."""
    code = (f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import cpu_precision as c; "
            f"print(c.images_per_s({name!r}, {precision!r}, {steps}, {warmup}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"error: exit code {done.returncode} ({last})"
    return round(float(done.stdout.strip().splitlines()[-1]), 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args(argv)
    report = {**report_json.machine(), "models": {}}
    for name in args.models:
        runs = {"fp32": [], "bf16": []}
        for _ in range(args.repeat):  # interleaved
            for precision in runs:
                runs[precision].append(one_run(name, precision, args.steps, args.warmup))
        result = {"input": CASES[name][0], "batch": CASES[name][1], "runs": runs}
        for precision, values in runs.items():
            numbers = [v for v in values if isinstance(v, float)]
            result[f"{precision}_img_s"] = statistics.median(numbers) if len(numbers) == len(values) else values[0]
        if all(isinstance(result[f"{p}_img_s"], float) for p in runs):
            result["bf16_over_fp32"] = round(result["bf16_img_s"] / result["fp32_img_s"], 3)
        report["models"][name] = result
        print(json.dumps({name: report["models"][name]}), file=sys.stderr, flush=True)
    return report_json.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
