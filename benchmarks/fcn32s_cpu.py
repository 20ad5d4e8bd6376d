"""VGG16-FCN32s (the report's P3 model A) on this CPU: where its time goes, and training / inference
tiles/s of each speed option against the plain baseline, as JSON.

    .venv/bin/python benchmarks/fcn32s_cpu.py --out benchmarks/results/fcn32s_cpu_avx512.json

Parts: forward seconds per 512 px tile of the VGG16 convolutions, fc6 (7x7 conv to 4096), fc7, and the
score layer + 32x upsampling, with their multiply-accumulates. Variants, each in its own process (a crash
inside a kernel is recorded, not fatal): inference one tile at a time (the report's loop) or in batches,
contiguous or channels_last, fp32 or bf16 autocast, eager, torch.compile (with and without inductor's
weight freezing) or TorchScript frozen and optimised for inference; training steps (batch 2)
likewise. Same random weights and tiles everywhere; `agreement` is the share of pixels whose predicted
class equals the baseline's, `max_abs_diff` the largest logit difference (what "computes the same" means
here: bf16 rounds, the rest should agree to float precision).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import report_json  # benchmarks/report_json.py: machine + JSON output

BENCH_DIR = Path(__file__).resolve().parent

INFERENCE = {  # name -> (batch, channels_last, bf16, mode)
    "one tile at a time (report)": (1, False, False, "eager"),
    "batch 4": (4, False, False, "eager"),
    "batch 4, channels_last": (4, True, False, "eager"),
    "batch 4, bf16": (4, False, True, "eager"),
    "batch 4, channels_last, bf16": (4, True, True, "eager"),
    "batch 4, torch.compile": (4, False, False, "compile"),
    # TorchScript freeze + optimize_for_inference: folds the graph and runs the convs on oneDNN's blocked
    # layout (PyTorch's recipe for CPU inference)
    "batch 4, torch.jit.optimize_for_inference": (4, False, False, "jit"),
    # torch.compile with inductor's freezing: the weights become constants, folded and pre-packed for
    # oneDNN - what PyTorch now recommends instead of the (deprecated) TorchScript freeze above
    "batch 4, torch.compile (freezing)": (4, False, False, "compile-freezing"),
    "batch 4, channels_last, torch.compile (freezing)": (4, True, False, "compile-freezing"),
}
TRAINING = {  # name -> (channels_last, bf16, compile); batch 2 as in p3_model_a's CPU runs
    "fp32 contiguous (dlcv's choice)": (False, False, False),
    "channels_last": (True, False, False),
    "torch.compile": (False, False, True),
    "bf16": (False, True, False),
}


def build(channels_last: bool):
    from dlcv.models import create_model
    torch.manual_seed(0)
    model = create_model("fcn32s_vgg16", num_classes=7, weights=None)
    # random score weights: FCN starts them at zero, which would make every prediction class 0
    torch.nn.init.normal_(model.score.weight, std=0.01)
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def tiles(n: int, side: int, channels_last: bool) -> torch.Tensor:
    x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def inference(batch: int, channels_last: bool, bf16: bool, mode: str, n: int, side: int, out: str) -> dict:
    model = build(channels_last).eval()
    x = tiles(n, side, channels_last)
    fast = model
    if mode.startswith("compile"):
        fast = torch.compile(model, options={"freezing": mode == "compile-freezing"})
    elif mode == "jit":
        with torch.no_grad():
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x[:batch], strict=False)))
    logits = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tic = time.perf_counter()
        fast(x[:batch])  # warm-up (compilation, allocator)
        warmup = time.perf_counter() - tic
        tic = time.perf_counter()
        for start in range(0, n, batch):
            logits.append(fast(x[start:start + batch])["out"].float())
        seconds = time.perf_counter() - tic
    torch.save(torch.cat(logits), out)
    return {"tiles_per_s": round(n / seconds, 3), "warmup_s": round(warmup, 1)}


def training(channels_last: bool, bf16: bool, compile_: bool, steps: int, side: int) -> dict:
    model = build(channels_last).train()
    fast = torch.compile(model) if compile_ else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = tiles(2, side, channels_last)
    y = torch.randint(0, 7, (2, side, side), generator=torch.Generator().manual_seed(2))
    for i in range(steps + 1):
        if i == 1:
            tic = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(fast(x)["out"].float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"tiles_per_s": round(2 * steps / (time.perf_counter() - tic), 3)}


def parts(side: int) -> dict:
    """Forward seconds per tile (eager fp32, batch 1, second of two calls) and multiply-accumulates."""
    model = build(False).eval()
    x = tiles(1, side, False)
    stages = [("vgg16 convolutions", model.features), ("fc6 (7x7 conv, 512 -> 4096)", model.fc[:3]),
              ("fc7 (1x1 conv, 4096 -> 4096)", model.fc[3:]), ("score + 32x upsampling",
                                                              torch.nn.Sequential(model.score, model.upscore))]
    result = {}
    with torch.no_grad():
        for name, stage in stages:
            stage(x)
            tic = time.perf_counter()
            y = stage(x)
            seconds = time.perf_counter() - tic
            macs = _macs(stage, x)
            result[name] = {"seconds": round(seconds, 3), "gmacs": round(macs / 1e9, 1)}
            x = y
    total = sum(p["seconds"] for p in result.values())
    for p in result.values():
        p["share"] = round(p["seconds"] / total, 3)
    return result


def _macs(stage: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the (transposed) convolutions of `stage` on one tile x."""
    total = []

    def count(m, inputs, out):
        if isinstance(m, torch.nn.ConvTranspose2d):  # every input pixel meets the whole kernel
            total.append(m.weight.numel() * inputs[0].shape[-2:].numel())
        else:  # every output value is one dot product over in_channels x kernel
            total.append(m.weight[0].numel() * out[0].numel())

    hooks = [m.register_forward_hook(count) for m in stage.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        stage(x)
    for h in hooks:
        h.remove()
    return sum(total)


def in_process(call: str) -> dict:
    code = f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import json, fcn32s_cpu as b; " \
           f"print(json.dumps(b.{call}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {done.returncode} ({last})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=4, help="tiles per inference measurement")
    p.add_argument("--steps", type=int, default=3, help="training steps per measurement (after one warm-up)")
    p.add_argument("--side", type=int, default=512, help="tile side (the course's tiles: 512)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    report = {**report_json.machine(), "input": f"{args.side}x{args.side}"}
    report["parts"] = in_process(f"parts({args.side})")
    print(json.dumps({"parts": report["parts"]}), file=sys.stderr, flush=True)
    report["inference"], base = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (batch, cl, bf16, mode)) in enumerate(INFERENCE.items()):
            out = str(Path(tmp) / f"{i}.pt")
            result = in_process(f"inference({batch}, {cl}, {bf16}, {mode!r}, {args.tiles}, {args.side}, {out!r})")
            if "error" not in result:
                logits = torch.load(out, weights_only=True)
                base = logits if base is None else base
                result["agreement"] = round((logits.argmax(1) == base.argmax(1)).float().mean().item(), 5)
                result["max_abs_diff"] = float(f"{(logits - base).abs().max().item():.3g}")
                result["speedup"] = round(result["tiles_per_s"] / report["inference"][next(iter(INFERENCE))]
                                          ["tiles_per_s"], 2) if i else 1.0
            report["inference"][name] = result
            print(json.dumps({name: result}), file=sys.stderr, flush=True)
    report["training"] = {}
    for i, (name, (cl, bf16, comp)) in enumerate(TRAINING.items()):
        result = in_process(f"training({cl}, {bf16}, {comp}, {args.steps}, {args.side})")
        first = report["training"].get(next(iter(TRAINING)), {})
        if i and "tiles_per_s" in result and "tiles_per_s" in first:
            result["speedup"] = round(result["tiles_per_s"] / first["tiles_per_s"], 2)
        report["training"][name] = result
        print(json.dumps({name: result}), file=sys.stderr, flush=True)
    return report_json.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
