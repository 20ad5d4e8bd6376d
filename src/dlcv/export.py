"""`dlcv export`: a checkpoint written as one ONNX or TorchScript file that computes what predict computes
(normalisation, test-time views, fp32 logits; its task's inference module builds the graph), with what it
expects in its metadata, verified against the checkpoint before it is kept.

ONNX goes through torch.onnx's default exporter (torch.export, "dynamo"; the TorchScript-based one is
deprecated), opset 18 by default (ONNX Runtime >= 1.14 runs it), weights inside the file, a dynamic batch
axis (and height and width for segmentation), as timm's onnx_export does. TorchScript is torch.jit.trace
(deprecated by PyTorch too, still what torch.jit.load and LibTorch read)."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dlcv.errors import DlcvError
from dlcv.fileio import atomic_path
from dlcv.inference import Exportable, read_any_checkpoint
from dlcv.inference.exported import (CHECKPOINT, INPUT_NAME, ONNX, TORCHSCRIPT, ExportedModel, metadata_entries,
                                     model_format)

log = logging.getLogger("dlcv")

FORMATS = (ONNX, TORCHSCRIPT)
DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch.onnx's exporter writes opset 18 and newer
# segmentation graphs are traced and verified on the course's tile size (smaller images can be too small for an
# encoder's 5x5 convolutions at the smallest test-time scale), and on ODD_SIZE
SEGMENT_SIDE = 512
ODD_SIZE = (509, 381)  # an odd, non-square size: the graph must take any size, as predict does


@dataclass(frozen=True)
class Verification:
    """The exported file against the checkpoint (fp32) on synthetic images."""
    images: int
    max_diff: float  # largest absolute difference of the first output (logits; a backbone's features)
    agree: int  # predictions the two agree on: labels of images, or of pixels; a backbone's feature vectors
    total: int
    unit: str  # "images", "pixels", or "feature vectors" (equal within FEATURE_TOLERANCE)
    ties: int = 0  # labels that differ where the checkpoint's top two logits are within TIE: rounding's choice

    @property
    def refused(self) -> bool:
        """Whether a prediction differs beyond rounding: the export then computes something else."""
        return self.agree + self.ties != self.total

    def line(self, runtime: str, against: str = "the checkpoint") -> str:
        ties = f" (and {self.ties:,} ties within {TIE:g})" if self.ties else ""
        return (f"verified {runtime} against {against} (fp32) on {self.images} synthetic images: largest "
                f"difference {self.max_diff:.3g}, {self.unit} agree: {self.agree:,}/{self.total:,}{ties}")


# A label that differs where the checkpoint's two highest logits are closer than this is a tie that float
# rounding breaks either way (another runtime sums in another order); any other difference refuses the export.
# Exactness shows in the largest difference (below 1e-5 on every model tried), printed beside it.
TIE = 1e-3
# a backbone has no labels to compare: its features agree where within this fraction of their largest magnitude
FEATURE_TOLERANCE = 1e-3


def exportable_of(ckpt: str | Path, tta: bool) -> tuple[dict, Exportable]:
    """The checkpoint (read and checked by its task's inference module) and what its export computes."""
    if model_format(ckpt) != CHECKPOINT:
        raise DlcvError(f"{ckpt} is an exported model already; export takes a dlcv checkpoint")
    state, module = read_any_checkpoint(ckpt)
    if not tta and not (state.get("preprocess") or {}).get("tta"):
        log.info("%s has no test-time views: --no-tta changes nothing", ckpt)
    return state, module.exportable(state, tta)


def format_of(out: str | Path, fmt: str | None) -> str:
    """--format, or what --out's suffix names (.onnx: ONNX; .pt, .pth, .ts: TorchScript)."""
    if fmt is None:
        fmt = {".onnx": ONNX, ".pt": TORCHSCRIPT, ".pth": TORCHSCRIPT, ".ts": TORCHSCRIPT}.get(Path(out).suffix.lower())
        if fmt is None:
            raise DlcvError(f"--out {out}: name the format with --format onnx|torchscript (or end the name in "
                            ".onnx or .pt)")
    if fmt not in FORMATS:
        raise DlcvError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def export_model(ckpt: str | Path, fmt: str | None, out: str | Path, tta: bool = True,
                 opset: int = DEFAULT_OPSET) -> Verification:
    """Writes `out` (atomically, only once verified: labels that differ from the checkpoint's refuse it)."""
    fmt = _checked_format(out, fmt, opset)
    state, ex = exportable_of(ckpt, tta)
    name = state["config"]["model"]["name"]
    metadata = metadata_entries(ex.metadata, state["task"], name, state["config"]["train"]["eval_batch_size"],
                                ex.outputs, state.get("epoch"))
    return _write_verified(ex, fmt, out, metadata, opset, name)


def export_ensemble(ckpts: list[str | Path], fmt: str | None, out: str | Path, tta: bool = True,
                    opset: int = DEFAULT_OPSET) -> Verification:
    """`dlcv classify ensemble`: one file whose logits are the mean of the classify checkpoints' fp32 logits
    (inference.classify.ensemble_exportable), written and verified as export_model writes one checkpoint."""
    from dlcv.inference.classify import ensemble_exportable, read_checkpoint
    fmt = _checked_format(out, fmt, opset)
    members = []
    for ckpt in ckpts:
        if model_format(ckpt) != CHECKPOINT:
            raise DlcvError(f"{ckpt} is an exported model; an ensemble is made of dlcv checkpoints")
        members.append((str(ckpt), read_checkpoint(ckpt)))
    ex = ensemble_exportable(members, tta)
    name = f"ensemble({', '.join(state['config']['model']['name'] for _, state in members)})"
    batch = min(state["config"]["train"]["eval_batch_size"] for _, state in members)
    return _write_verified(ex, fmt, out, metadata_entries(ex.metadata, "classify", name, batch, ex.outputs, None),
                           opset, name, "the mean of the checkpoints")


def _checked_format(out: str | Path, fmt: str | None, opset: int) -> str:
    fmt = format_of(out, fmt)
    if fmt == ONNX and opset < MIN_OPSET:
        raise DlcvError(f"--opset {opset}: torch.onnx's exporter writes opset {MIN_OPSET} or newer")
    return fmt


def _write_verified(ex: Exportable, fmt: str, out: str | Path, metadata: dict[str, str], opset: int,
                    name: str, against: str = "the checkpoint") -> Verification:
    side = ex.side or SEGMENT_SIDE
    example = synthetic_images(2, side, side, seed=1).float() / 255
    with atomic_path(out) as tmp:
        with torch.no_grad():
            if fmt == ONNX:
                _write_onnx(ex, example, tmp, metadata, opset, name)
            else:
                _write_torchscript(ex, example, tmp, metadata, name)
        result = verify(tmp, fmt, ex, out)
        runtime = "ONNX Runtime" if fmt == ONNX else "TorchScript"
        if result.refused:
            raise DlcvError(f"{out}: not written: the exported model differs from {against} "
                            f"({result.line(runtime, against)})")
        log.info(result.line(runtime, against))
    return result


def _write_onnx(ex: Exportable, example: torch.Tensor, path: Path, metadata: dict[str, str], opset: int,
                name: str) -> None:
    axes = {0: "batch"} if ex.side else {0: "batch", 2: "height", 3: "width"}
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; checked here for a clear message)
    except ImportError:
        raise DlcvError("ONNX export needs onnx and onnxscript: pip install 'dlcv[export]'") from None
    try:  # its progress lines, log lines and warnings are torch's business, not the user's
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ex.graph, (example,), None, dynamo=True, dynamic_shapes=(axes,),
                                        input_names=[INPUT_NAME], output_names=list(ex.outputs),
                                        opset_version=opset, external_data=False, verbose=False)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DlcvError(f"torch.onnx could not export model '{name}': {first}") from None
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Only warnings and errors from these loggers while the block runs."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _write_torchscript(ex: Exportable, example: torch.Tensor, path: Path, metadata: dict[str, str],
                       name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation, and the tracer's warnings about Python ints
        try:
            traced = torch.jit.trace(ex.graph, example, check_trace=False, _store_inputs=False)
        except Exception as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise DlcvError(f"torch.jit.trace could not trace model '{name}': {first}") from None
        torch.jit.save(traced, str(path), _extra_files=metadata)


def synthetic_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Seeded synthetic uint8 images: smooth colour fields plus noise (varied predictions, not one class)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.rand(n, 3, height, width, generator=gen) - 0.5
    return (255 * (smooth + 0.3 * noise).clamp(0, 1)).round().to(torch.uint8)


def verify(path: str | Path, fmt: str, ex: Exportable, shown: str | Path | None = None) -> Verification:
    """The exported file and the checkpoint's predict path (fp32) on seeded synthetic images: 3 at the
    graph's size and 1 more (segmentation: at ODD_SIZE, so a graph tied to one size shows). `shown`: the
    file's name in messages (the one it is being written as)."""
    shown = shown or path
    model = ExportedModel(path, fmt=fmt)
    sizes = [(3, ex.side, ex.side), (1, ex.side, ex.side)] if ex.side else \
        [(2, SEGMENT_SIDE, SEGMENT_SIDE), (1, *ODD_SIZE)]
    max_diff, agree, total, ties = 0.0, 0, 0, 0
    for seed, (n, h, w) in enumerate(sizes):
        images = synthetic_images(n, h, w, seed)
        try:
            ours = model.run(images)[ex.outputs[0]]
        except Exception as exc:  # a graph tied to the traced batch or size fails here, in its runtime's words
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DlcvError(f"{shown}: not written: the exported model fails on {n} x 3 x {h} x {w} images: "
                            f"{first}") from None
        theirs = ex.reference(images).cpu()
        if ours.shape != theirs.shape:
            raise DlcvError(f"{shown}: not written: the exported model's output is {tuple(ours.shape)} for "
                            f"{n} x 3 x {h} x {w} images, the checkpoint's {tuple(theirs.shape)}")
        diff = (ours - theirs).abs()
        max_diff = max(max_diff, diff.max().item())
        if ex.labels:
            same = ours.argmax(1) == theirs.argmax(1)
            if theirs.shape[1] > 1:  # (one class: the same label everywhere)
                top2 = theirs.topk(2, dim=1).values
                ties += int((~same & (top2[:, 0] - top2[:, 1] <= TIE)).sum())
        else:
            same = diff.flatten(1).amax(1) <= FEATURE_TOLERANCE * theirs.abs().max().clamp_min(1)
        agree, total = agree + int(same.sum()), total + same.numel()
    unit = ("images" if ex.side else "pixels") if ex.labels else "feature vectors"
    return Verification(sum(n for n, _, _ in sizes), max_diff, agree, total, unit, ties)


def check_export_target(out: str | Path) -> None:
    """An existing --out is replaced only when it is an exported model (exporting again); any other file
    (a checkpoint, an image, a document) is never overwritten."""
    out = Path(out)
    if not out.is_file() or out.stat().st_size == 0:
        return
    try:
        fmt = model_format(out)
    except DlcvError:
        fmt = None
    if fmt not in FORMATS:
        kind = "a dlcv checkpoint" if fmt == CHECKPOINT else "not an exported model"
        raise DlcvError(f"--out {out} exists and is {kind}; pick another file")
