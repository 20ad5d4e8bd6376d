"""P3's graded commands from a trained model (a checkpoint, or an exported file): predicted masks for a
folder of tiles (hw1_3.sh) and the course's evaluator (`segment miou`), exactly its semantics and printout."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dlcv.data.images import read_rgb
from dlcv.data.masks import NUM_CLASSES, SAT_SUFFIXES, UNKNOWN, mask_name, read_mask, sat_images, write_mask
from dlcv.errors import DlcvError
from dlcv.inference.exported import CHECKPOINT, check_run_options, model_format, open_exported
from dlcv.inference.segment import Segmenter, goes_whole, read_checkpoint
from dlcv.metrics import confusion_of, course_iou


def load_segmenter(model_path: str | Path, device: torch.device, tta: bool = True, precision: str = "auto",
                   batch_size: int | None = None, compile_model: bool = False):
    """A segment checkpoint's model as its run validated it (inference.segment.Segmenter), or an exported
    segmenter (inference.exported.ExportedModel, fp32). `tta=False` drops the saved test-time augmentation
    (plain predictions); the rest: see Segmenter.from_checkpoint."""
    if model_format(model_path) != CHECKPOINT:
        model = open_exported(model_path, "segment", "segment predict", device, batch_size)
        check_run_options(model, tta, precision)
        if compile_model:
            raise DlcvError(f"--compile applies to checkpoints; {model_path} is an exported model")
        return model
    state = read_checkpoint(model_path)
    if not tta:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    return Segmenter.from_checkpoint(state, device, precision, batch_size, str(model_path), compile_model)


def predict_folder(model_path: str | Path, image_dir: str | Path, out_dir: str | Path, device: torch.device,
                   batch_size: int | None = None, tta: bool = True, compile_model: bool = False,
                   precision: str = "auto") -> int:
    """`xxxx_mask.png` (RGB, course palette, the input's size) for every `xxxx_sat.jpg`, written atomically.
    Tiles go through the model as its run validated them (inference.segment.Segmenter), `batch_size` at a
    time (default: the run's train.eval_batch_size; one at a time where a batch mixes tile sizes, and an
    image too large to go whole (inference.segment.WINDOW) alone, window by window, so memory stays bounded)."""
    files = sat_images(image_dir)
    out_dir = Path(out_dir)
    _refuse_ground_truth_folder(Path(image_dir), out_dir)
    segmenter = load_segmenter(model_path, device, tta, precision, batch_size, compile_model)
    for start in range(0, len(files), segmenter.batch_size):
        chunk, small = files[start:start + segmenter.batch_size], []
        for f in chunk:  # a large image is predicted and written as soon as it is read: one in memory at a time
            array = read_rgb(f).transpose(2, 0, 1)
            if not goes_whole(*array.shape[1:]):
                _write_masks(out_dir, [f], _compiled_call(segmenter.masks, torch.from_numpy(np.stack([array]))))
            else:
                small.append((f, array))
        groups = [small] if len({a.shape for _, a in small}) == 1 else [[pair] for pair in small]
        for group in groups:
            tiles = torch.from_numpy(np.stack([a for _, a in group]))
            _write_masks(out_dir, [f for f, _ in group], _compiled_call(segmenter.masks, tiles))
    return len(files)


def _write_masks(out_dir: Path, files: list[Path], masks: torch.Tensor) -> None:
    for f, mask in zip(files, masks):
        write_mask(out_dir / mask_name(f), mask.numpy())


def _compiled_call(fn, *args):
    """fn(*args), with torch.compile's failure to build (typically no C++ compiler on the machine) as one line."""
    try:
        return fn(*args)
    except torch._dynamo.exc.BackendCompilerFailed as e:
        reason = (str(e.inner_exception).strip().splitlines() or [type(e.inner_exception).__name__])[0]
        raise DlcvError(f"--compile: torch.compile could not build the model ({reason}); run without --compile") from None


def _refuse_ground_truth_folder(image_dir: Path, out_dir: Path) -> None:
    """`hw1_3.sh DIR DIR` is easy to type, and the course's folders hold `_sat.jpg` and `_mask.png` side
    by side: predictions must never overwrite ground-truth masks."""
    if out_dir.exists() and out_dir.resolve() == image_dir.resolve():
        raise DlcvError(f"the output folder {out_dir} is the image folder: its masks would be overwritten; "
                        "pick another output folder")
    if out_dir.is_dir():
        for sat in sorted(out_dir.iterdir()):
            if not sat.name.lower().endswith(SAT_SUFFIXES):
                continue
            mask = sat.with_name(mask_name(sat))
            if mask.exists():
                raise DlcvError(f"{out_dir} holds ground truth ({sat.name} with {mask.name}): writing "
                                "predictions there would overwrite it; pick another output folder")


def score_folders(gt_dir: str | Path, pred_dir: str | Path) -> tuple[list[float], float]:
    """The official evaluator: the `.png` files of each folder, paired in sorted order, one confusion
    matrix over all of them."""
    gt = sorted(Path(gt_dir).glob("*.png"))
    pred = sorted(Path(pred_dir).glob("*.png"))
    if not gt:
        raise DlcvError(f"no .png masks in {gt_dir}")
    if len(gt) != len(pred):
        raise DlcvError(f"{len(gt)} masks in {gt_dir} but {len(pred)} in {pred_dir}")
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for g, p in zip(gt, pred):
        truth, _ = read_mask(g, UNKNOWN)
        guess, _ = read_mask(p, UNKNOWN)
        if truth.shape != guess.shape:
            raise DlcvError(f"{p} is {guess.shape[1]}x{guess.shape[0]} but {g} is {truth.shape[1]}x{truth.shape[0]}")
        confusion += confusion_of(truth, guess)
    return course_iou(confusion)


def format_scores(ious: Sequence[float], miou: float) -> str:
    """Exactly the official evaluator's printout."""
    return "".join(f"class #{c} : {iou:1.5f}\n" for c, iou in enumerate(ious)) + f"\nmean_iou: {miou:f}\n"
