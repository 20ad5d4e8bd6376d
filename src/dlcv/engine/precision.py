"""The numeric policy of a model, in one place: its precision (autocast dtype) and memory layout, resolved
for a device once when a run starts, recorded in every checkpoint ("inference": `Numerics.record`), and
applied by every forward pass outside training (inference/), so predict computes what validation did."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import torch

from dlcv.engine import run as run_mod
from dlcv.errors import DlcvError

log = logging.getLogger("dlcv")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """`auto`: bf16 on CUDA; on a CPU bf16 exactly when it is native and measured faster for the model
    (`cpu_bf16`: the model registry's entry, passed on by the task), else fp32. Evidence (train img/s
    fp32 -> bf16 autocast, benchmarks/cpu_precision.py):
    - 2-core Intel Xeon with AMX-BF16 (benchmarks/results/cpu_precision_avx512.json): cifar_convnet b256
      312 -> 856, resnet50_cifar b32 27.3 -> 54.8, resnet18 64 px b64 202 -> 332, resnet50 128 px b16
      25.9 -> 45.1, fcn_small 256 px b8 51 -> 94; but efficientnet_lite0 64 px 214 -> 139 and
      lite0_deeplab 256 px 15.9 -> 13.0 (depthwise convolutions: slower), and fcn32s_vgg16 crashes in
      bf16 there: their registry entries say cpu_bf16=False.
    - 2-core CPU with AVX2 only (bf16 emulated): resnet50_cifar b32 8.7 -> 0.6, cifar_convnet b64
      274 -> 15, so fp32 there."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if run_mod.cpu_has_native_bf16() and cpu_bf16 else "fp32"


def resolve_channels_last(setting, device: torch.device, cpu_channels_last: bool = True) -> bool:
    """`auto`: on with CUDA (the layout tensor cores want); on CPU as measured for the model (the registry's
    `cpu_channels_last`, passed on by the task). On the 2-core
    CPU (fp32 img/s, contiguous -> channels_last): resnet50_cifar b32 9.5 -> 10.5, BYOL ResNet-50 at 128 px
    b16 3.0 -> 4.0 (benchmarks/results/cpu_2core.json), cifar_convnet b64 99 -> 113; but VGG16-FCN32s at
    512 px 0.103 -> 0.089, so its registry entry turns it off there."""
    if setting != "auto":
        return setting
    return device.type == "cuda" or cpu_channels_last


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` on the device (fp32: none)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Numerics:
    """How a model computes: `precision` (a key of PRECISIONS, resolved) and its memory layout."""
    precision: str
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return autocast(device, self.precision)

    def record(self) -> dict:
        """What a checkpoint keeps under "inference"."""
        return asdict(self)

    @classmethod
    def from_record(cls, record, where: str) -> Numerics:
        if not isinstance(record, dict) or record.get("precision") not in PRECISIONS \
                or not isinstance(record.get("channels_last"), bool):
            raise DlcvError(f"{where}: its 'inference' entry {record!r} is not {{precision: one of "
                            f"{', '.join(PRECISIONS)}, channels_last: true/false}}")
        return cls(record["precision"], record["channels_last"])


def device_runs(precision: str, device: torch.device) -> bool:
    """Whether autocast in `precision` runs on the device: a CPU runs all of them (slowly where it lacks
    the instructions); CUDA runs bf16 where torch says it can (natively from Ampere on, emulated before)."""
    return not (device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported())


def for_predict(validated: Numerics, requested: str, device: torch.device) -> Numerics:
    """The numerics predict runs in: `requested` (`auto`: those the run validated in) where the device runs
    it, else fp32, saying so; in the layout the run validated in. In what the run validated in, predict's
    labels are its last validation's on the same machine; anything else may change a few."""
    precision = validated.precision if requested == "auto" else requested
    if not device_runs(precision, device):
        log.warning("%s does not run %s: predicting in fp32 (the run validated in %s; a few labels may "
                    "differ from its validation)", device, precision, validated.precision)
        precision = "fp32"
    elif precision != validated.precision:
        log.info("predicting in %s (--precision); the run validated in %s: a few labels may differ from its "
                 "validation", precision, validated.precision)
    if precision == "bf16" and device.type == "cpu" and not run_mod.cpu_has_native_bf16():
        log.info("bf16 is emulated on this CPU (no AVX512-BF16 / AMX): slow; --precision fp32 is faster (a few "
                 "labels may then differ from the run's validation)")
    return Numerics(precision, validated.channels_last)
