"""Architecture diagrams generated from the model objects: a column of blocks in data-flow order, each with
its output shape and parameter count, readable at a glance instead of a thousand-node graph dump.

Shapes come from one forward pass with hooks on the chosen blocks, on the `meta` device (no memory, no
arithmetic: instant even for EfficientNet-V2-L at 224 px or FCN-ResNet50 at 512 px).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dlcv.data.masks import NUM_CLASSES
from dlcv.models import create_model, model_spec
from dlcv.viz.figures import plt, save

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Block:
    name: str
    kind: str
    params: int
    out_shape: tuple | None = None  # per sample (C, H, W) or (D,); None when forward never calls it
    order: int = 10**9


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def choose_blocks(model: nn.Module, max_blocks: int = 14) -> list[tuple[str, nn.Module]]:
    """Top-level children, then the biggest mixed containers (a backbone of stem + stages) opened up while
    the diagram stays small. A stage of identical blocks stays one box (`6 x Bottleneck`), and so does a
    conv-norm-activation triple."""
    chosen = list(model.named_children())
    while True:
        candidates = sorted(((i, n, m) for i, (n, m) in enumerate(chosen)
                             if isinstance(m, _CONTAINERS) and len({type(c) for c in m.children()}) > 1
                             and any(len(list(c.children())) for c in m.children())), key=lambda c: -_params(c[2]))
        fitting = [(i, n, m) for i, n, m in candidates if len(chosen) - 1 + len(m) <= max_blocks]
        if not fitting:
            return chosen
        i, name, module = fitting[0]
        chosen[i:i + 1] = [(f"{name}.{child}", sub) for child, sub in module.named_children()]


def _kind(module: nn.Module) -> str:
    """`Sequential` says little: a stage of identical blocks shows as `3 x Bottleneck`."""
    kinds = {type(c).__name__ for c in module.children()}
    if isinstance(module, _CONTAINERS) and len(kinds) == 1 and len(module) > 1:
        return f"{len(module)} x {kinds.pop()}"
    return type(module).__name__


def _shape(output) -> tuple | None:
    if isinstance(output, dict):
        output = output.get("out", next(iter(output.values()), None))
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    return tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None


def trace_blocks(model: nn.Module, input_size: int, max_blocks: int = 14) -> list[Block]:
    blocks, handles, calls = [], [], [0]
    for name, module in choose_blocks(model, max_blocks):
        block = Block(name, _kind(module), _params(module))
        blocks.append(block)

        def hook(_m, _args, output, block=block):
            if block.out_shape is None:
                block.out_shape, block.order = _shape(output), calls[0]
                calls[0] += 1
        # a ModuleList is never called itself (its owner loops over it, as EfficientNet-Lite does over its
        # MBConv blocks): it ends, and shows its output, where its last block does
        watched = module[-1] if isinstance(module, nn.ModuleList) and len(module) else module
        handles.append(watched.register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return sorted(blocks, key=lambda b: b.order) + [Block("output", "model output", 0, _shape(output))]


def build_for_diagram(name: str, num_classes: int, options: dict | None = None) -> nn.Module:
    """The model without weights, on the meta device when its code allows it (else on the CPU)."""
    try:
        with torch.device("meta"):
            return create_model(name, num_classes=num_classes, weights=None, **(options or {}))
    except (NotImplementedError, RuntimeError):
        return create_model(name, num_classes=num_classes, weights=None, **(options or {}))


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def draw(blocks: list[Block], title: str, path: str | Path) -> Path:
    height = 0.62
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + height * len(blocks) * 1.35))
    ax.set_xlim(0, 10), ax.set_ylim(-len(blocks) * 1.35, 1.0), ax.axis("off")
    ax.text(5, 0.55, title, ha="center", va="center", fontsize=11, weight="bold")
    for i, b in enumerate(blocks):
        y = -i * 1.35
        shape = "x".join(map(str, b.out_shape)) if b.out_shape else "not called in forward"
        colour = "#dbe9f6" if b.params else "#f2f2f2"
        ax.add_patch(plt.Rectangle((0.6, y - height), 8.8, height * 1.6, facecolor=colour, edgecolor="#4a6fa5"))
        ax.text(5, y + 0.12, f"{b.name}  ({b.kind})", ha="center", va="center", fontsize=9, weight="bold")
        ax.text(5, y - 0.38, f"out {shape}   |   {_fmt_params(b.params)} params", ha="center", va="center",
                fontsize=8.5, family="monospace")
        if i + 1 < len(blocks):
            ax.annotate("", xy=(5, y - 1.35 + height * 0.6), xytext=(5, y - height),
                        arrowprops={"arrowstyle": "->", "color": "#4a6fa5"})
    return save(fig, path)


def architecture_figure(name: str, out: str | Path, input_size: int | None = None, num_classes: int | None = None,
                        options: dict | None = None, max_blocks: int = 14) -> Path:
    spec = model_spec(name)
    input_size = input_size or spec.input_size
    num_classes = num_classes or (NUM_CLASSES if spec.task == "segment" else 50)
    model = build_for_diagram(name, num_classes, options)
    blocks = trace_blocks(model, input_size, max_blocks)
    title = f"{name}: input 3x{input_size}x{input_size}, {_fmt_params(_params(model))} parameters"
    return draw(blocks, title, out)
