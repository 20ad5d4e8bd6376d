"""bf16 training on a CPU, guarded. On CPUs with native bf16 (AVX512-BF16), torch runs bf16 convolutions
through oneDNN, whose backward now and then returned inf/nan weight gradients (docs/performance.md,
"bf16 gradients on AVX-512 CPUs"): so on a CPU every bf16 step's gradients are checked, and a step whose
gradients are not finite is done again in fp32 from the same state (random generator and BatchNorm
statistics as they were before it). On a GPU the check would cost a host sync per step, and the fault
was never seen there."""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("dlcv")


def guards_gradients(device: torch.device, precision: str) -> bool:
    """Whether the loop checks each step's gradients: bf16 autocast on a CPU."""
    return device.type == "cpu" and precision == "bf16"


class Bf16Guard:
    """Around one optimizer step of `module`: `mark()` before the forward pass keeps what the step starts
    from; after the backward pass, `first_nonfinite()` names a parameter whose gradient holds inf/nan, and
    `rewind()` puts the random generator and the buffers back, so the step can run again in fp32 as if it
    had run in fp32 at first (the same dropout, the same CutMix draws, BatchNorm updated once)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.redone = 0  # steps of this process done again in fp32

    def mark(self) -> None:
        self._rng = torch.get_rng_state()
        self._buffers = [b.detach().clone() for b in self.module.buffers()]

    def first_nonfinite(self) -> str | None:
        named = [(n, p.grad) for n, p in self.module.named_parameters() if p.grad is not None]
        if not named or torch.stack([g.isfinite().all() for _, g in named]).all():
            return None
        return next(n for n, g in named if not g.isfinite().all())

    def rewind(self, step: int, parameter: str) -> None:
        torch.set_rng_state(self._rng)
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), self._buffers):
                buffer.copy_(saved)
        self.redone += 1
        if self.redone == 1:
            log.warning("step %d: bf16 gave inf/nan gradients (%s first) while the loss was finite; the step is "
                        "done again in fp32, as is any later step where this happens (a fault of oneDNN's bf16 "
                        "kernels on some CPUs: docs/performance.md; train.precision=fp32 avoids it)", step, parameter)
