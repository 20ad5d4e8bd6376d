"""Which parameter's gradient goes wrong under bf16 autocast on this CPU, and for which convolution shapes:
the evidence behind engine/guard.py (docs/performance.md, "bf16 gradients on AVX-512 CPUs").

    .venv/bin/python benchmarks/bf16_grad_check.py --model resnet18 --size 16 --batch 32 --repeat 12
    .venv/bin/python benchmarks/bf16_grad_check.py --op 32,256,1,512,3,2,1 --repeat 50   # one conv: N,C,H,O,k,s,p
    ONEDNN_VERBOSE=1 .venv/bin/python benchmarks/bf16_grad_check.py ...   # oneDNN names each kernel it runs

Each repeat draws a batch, computes every parameter's gradient in fp32 and under bf16 autocast from the same
weights, and records per parameter: non-finite values, the relative error against fp32, and, for
convolutions, non-zero gradient in "dead taps" (kernel positions that only ever see padding at this input
size, whose true gradient is exactly 0: anything else there is memory the kernel never wrote). Uninitialised
memory reads back as whatever the last owner left, usually zeros in a fresh process: the script restarts
itself once under glibc's MALLOC_PERTURB_ (every allocation filled with 0x7f bytes, huge floats) with
large blocks kept on the heap, so such a read shows every time (--no-poison: as it comes).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import report_json  # benchmarks/report_json.py: machine + JSON output

POISON = {"MALLOC_PERTURB_": "128", "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "DLCV_BF16_CHECK_POISONED": "1"}


def dead_taps(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """kh x kw booleans: the kernel positions no output position ever applies to an input pixel."""
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    uses = torch.nn.grad.conv2d_weight(torch.ones(1, 1, height, width), (1, 1, *conv.kernel_size),
                                       torch.ones(1, 1, out_h, out_w), conv.stride, conv.padding, conv.dilation)
    return uses[0, 0] == 0


def conv_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """Every convolution's input size, geometry and dead taps at this input."""
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def record(mod, args, _out, name=name):
                h, w = args[0].shape[-2:]
                shapes[name] = {"input": [int(h), int(w)], "kernel": list(mod.kernel_size), "stride": list(mod.stride),
                                "padding": list(mod.padding), "dead": dead_taps(mod, int(h), int(w))}
            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(reference: dict, checked: dict, shapes: dict[str, dict]) -> dict[str, dict]:
    """Per parameter whose bf16 gradient holds inf/nan or non-zero dead taps: those counts and its relative
    error (finite values) against fp32. A randomly initialised ResNet-18 at 16 px has relative errors of
    0.1-0.5 in every layer on a CPU whose bf16 is correct (bf16 rounding, amplified through the layers), so
    the error alone flags nothing."""
    found = {}
    for name, ref in reference.items():
        grad = checked[name]
        nonfinite = int((~grad.isfinite()).sum())
        conv = shapes.get(name.rsplit(".", 1)[0]) if name.endswith("weight") else None
        dead = int((grad[..., conv["dead"]] != 0).sum()) if conv is not None and conv["dead"].any() else 0
        if nonfinite or dead:
            finite = torch.where(grad.isfinite(), grad, 0.0)
            rel = float((finite - ref).norm() / ref.norm().clamp_min(1e-30))
            found[name] = {"nonfinite": nonfinite, "dead_taps_written": dead, "relative_error": round(rel, 5)}
    return found


def build(args) -> tuple[nn.Module, torch.Tensor, int]:
    """The model, an input of its size and its class count (--op: one convolution and a linear head)."""
    if args.op:
        n, c, h, o, k, s, p = (int(v) for v in args.op.split(","))
        model = nn.Sequential(nn.Conv2d(c, o, k, s, p, bias=False), nn.Flatten(), nn.LazyLinear(10))
        x = torch.randn(n, c, h, h)
        model(x)  # materialises the lazy head
        return model, x, 10
    from dlcv.models import create_model
    model = create_model(args.model, num_classes=args.classes, weights=None)
    return model, torch.randn(args.batch, 3, args.size, args.size), args.classes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=36)
    parser.add_argument("--op", help="one convolution instead of a model: N,C,H,O,k,s,p (square)")
    parser.add_argument("--repeat", type=int, default=12)
    parser.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    parser.add_argument("--no-poison", action="store_true", help="do not restart under MALLOC_PERTURB_")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if not args.no_poison and not os.environ.get("DLCV_BF16_CHECK_POISONED"):
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  {**os.environ, **POISON})
    torch.manual_seed(0)
    model, x, classes = build(args)
    layout = torch.contiguous_format if args.contiguous else torch.channels_last
    model = model.to(memory_format=layout).train()
    shapes = conv_shapes(model, x)
    repeats = []
    for _ in range(args.repeat):
        x = torch.randn_like(x).contiguous(memory_format=layout)
        y = torch.randint(0, classes, (len(x),))
        reference = gradients(model, x, y, bf16=False)
        repeats.append(compare(reference, gradients(model, x, y, bf16=True), shapes))
    failed = [r for r in repeats if r]
    report = {"machine": report_json.machine(), "poisoned": bool(os.environ.get("DLCV_BF16_CHECK_POISONED")),
              "case": vars(args), "layout": "contiguous" if args.contiguous else "channels_last",
              "repeats": args.repeat, "repeats_with_nonfinite_or_unwritten_gradients": len(failed),
              "first_parameter_per_failed_repeat": [next(iter(r)) for r in failed],
              "parameters_off_per_failed_repeat": failed,
              "convolutions_with_dead_taps": {n: {k: v for k, v in s.items() if k != "dead"} | {
                  "dead_taps": int(s["dead"].sum())} for n, s in shapes.items() if s["dead"].any()}}
    return report_json.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
