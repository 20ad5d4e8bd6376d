"""P3's graded commands from a trained model (a checkpoint, or an exported file): predicted masks for a
folder of tiles (hw1_3.sh) and the course's evaluator (`segment miou`), exactly its semantics and printout;
the same two for a model of a dataset's own classes (the pairs layout): masks in the form its training masks
had (class indices, or the colours of its classes.csv), each carrying the class table, which `segment miou`
then scores with."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dlcv.data.images import list_images, read_rgb
from dlcv.data.masks import (COURSE, NUM_CLASSES, SAT_SUFFIXES, UNKNOWN, MaskClasses, check_prediction_files,
                             check_prediction_targets, classes_of_prediction, course_tiles, mask_name, sat_images,
                             write_mask)
from dlcv.errors import DlcvError
from dlcv.inference.exported import CHECKPOINT, check_run_options, model_format, open_exported
from dlcv.inference.segment import Segmenter, goes_whole, read_checkpoint
from dlcv.metrics import confusion_of, segmentation_iou


def load_segmenter(model_path: str | Path, device: torch.device, tta: bool = True, precision: str = "auto",
                   batch_size: int | None = None, compile_model: bool = False):
    """(model, its mask classes): a segment checkpoint's model as its run validated it
    (inference.segment.Segmenter), or an exported segmenter (inference.exported.ExportedModel, fp32).
    `tta=False` drops the saved test-time augmentation (plain predictions); the rest: see
    Segmenter.from_checkpoint."""
    if model_format(model_path) != CHECKPOINT:
        model = open_exported(model_path, "segment", "segment predict", device, batch_size)
        check_run_options(model, tta, precision)
        if compile_model:
            raise DlcvError(f"--compile applies to checkpoints; {model_path} is an exported model")
        return model, mask_classes(model.metadata, str(model_path))
    state = read_checkpoint(model_path)
    if not tta:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    return (Segmenter.from_checkpoint(state, device, precision, batch_size, str(model_path), compile_model),
            mask_classes(state, str(model_path)))


def mask_classes(record: dict[str, Any], where: str) -> MaskClasses:
    """The mask classes a segment checkpoint (or an export's metadata) records; the course's where it records
    none (a model of the course's data, or of a dlcv before the record)."""
    return MaskClasses.from_record(record["masks"], where) if record.get("masks") else COURSE


def inputs_and_outputs(table: MaskClasses, image_dir: Path) -> list[tuple[Path, str]]:
    """(image, mask file name) for every image predict reads: the course's `xxxx_sat.jpg` -> `xxxx_mask.png`,
    else every image of the folder -> NAME.png (two images of one NAME are refused: one mask each)."""
    if table.course:
        return [(f, mask_name(f)) for f in sat_images(image_dir)]
    pairs, seen = [], {}
    for f in list_images(image_dir):
        if f.stem in seen:
            raise DlcvError(f"{f} and {seen[f.stem]} would both predict {f.stem}.png; rename one")
        seen[f.stem] = f
        pairs.append((f, f"{f.stem}.png"))
    return pairs


def predict_folder(model_path: str | Path, image_dir: str | Path, out_dir: str | Path, device: torch.device,
                   batch_size: int | None = None, tta: bool = True, compile_model: bool = False,
                   precision: str = "auto") -> int:
    """A mask (the input's size) for every tile, written atomically: for a P3 model `xxxx_mask.png` (RGB, course
    palette) for every `xxxx_sat.jpg`; for a model of a dataset's own classes NAME.png for every image NAME.*
    (see inputs_and_outputs, MaskClasses.image). Tiles go through the model as its run validated them
    (inference.segment.Segmenter), `batch_size` at a time (default: the run's train.eval_batch_size; one at a
    time where a batch mixes tile sizes, and an image too large to go whole (inference.segment.WINDOW) alone,
    window by window, so memory stays bounded)."""
    out_dir = Path(out_dir)
    check_prediction_targets(out_dir, course_tiles(image_dir), "OUT_DIR")  # course masks: before reading the model
    segmenter, table = load_segmenter(model_path, device, tta, precision, batch_size, compile_model)
    work = inputs_and_outputs(table, Path(image_dir))
    if table.course:
        _refuse_ground_truth_folder(Path(image_dir), out_dir)
    else:
        check_prediction_files(out_dir, [name for _, name in work], "OUT_DIR")
    for start in range(0, len(work), segmenter.batch_size):
        chunk, small = work[start:start + segmenter.batch_size], []
        for f, name in chunk:  # a large image is predicted and written as soon as it is read: one in memory at a time
            array = read_rgb(f).transpose(2, 0, 1)
            if not goes_whole(*array.shape[1:]):
                _write_masks(out_dir, [name], _compiled_call(segmenter.masks, torch.from_numpy(np.stack([array]))),
                             table)
            else:
                small.append((name, array))
        groups = [small] if len({a.shape for _, a in small}) == 1 else [[pair] for pair in small]
        for group in groups:
            tiles = torch.from_numpy(np.stack([a for _, a in group]))
            _write_masks(out_dir, [name for name, _ in group], _compiled_call(segmenter.masks, tiles), table)
    return len(work)


def _write_masks(out_dir: Path, names: list[str], masks: torch.Tensor, table: MaskClasses) -> None:
    for name, mask in zip(names, masks):
        write_mask(out_dir / name, mask.numpy(), table)


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


def prediction_classes(pred_dir: str | Path) -> MaskClasses:
    """The class table the predicted masks carry (a model of a dataset's own classes), else the course's."""
    first = min(Path(pred_dir).glob("*.png"), default=None)
    return (classes_of_prediction(first) if first else None) or COURSE


def score_folders(gt_dir: str | Path, pred_dir: str | Path) -> tuple[list[float], float]:
    """The official evaluator: the `.png` files of each folder, paired in sorted order, one confusion matrix
    over all of them. Predictions that carry a class table (prediction_classes) are scored with it
    (metrics.mean_iou, pixels of no class left out); the course's with the course's mIoU."""
    gt = sorted(Path(gt_dir).glob("*.png"))
    pred = sorted(Path(pred_dir).glob("*.png"))
    if not gt:
        raise DlcvError(f"no .png masks in {gt_dir}")
    if len(gt) != len(pred):
        raise DlcvError(f"{len(gt)} masks in {gt_dir} but {len(pred)} in {pred_dir}")
    table = prediction_classes(pred_dir)
    num_classes = NUM_CLASSES if table.course else len(table.names)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for g, p in zip(gt, pred):
        if (classes_of_prediction(p) or COURSE) != table:
            raise DlcvError(f"{p} was predicted with other classes than {pred[0]}; score one model's masks at a time")
        truth, _ = table.read(g, UNKNOWN)
        guess, _ = table.read(p, UNKNOWN)
        if truth.shape != guess.shape:
            raise DlcvError(f"{p} is {guess.shape[1]}x{guess.shape[0]} but {g} is {truth.shape[1]}x{truth.shape[0]}")
        confusion += confusion_of(truth, guess, num_classes)
    return segmentation_iou(confusion, table)


def format_scores(ious: Sequence[float], miou: float, table: MaskClasses = COURSE) -> str:
    """Exactly the official evaluator's printout; for a dataset's own classes, each line also names its class."""
    if table.course:
        return "".join(f"class #{c} : {iou:1.5f}\n" for c, iou in enumerate(ious)) + f"\nmean_iou: {miou:f}\n"
    return "".join(f"class #{c} : {iou:1.5f}  {name}\n" for c, (iou, name) in enumerate(zip(ious, table.names))) \
        + f"\nmean_iou: {miou:f}\n"
