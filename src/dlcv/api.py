"""The Python API: `dlcv.load(path)` runs a trained model (a checkpoint or an exported file) on images as
the predict commands do, and `dlcv.train(task, recipe, out, **overrides)` trains as the training commands
do. Errors are the commands' one-line messages, raised as dlcv.DlcvError (config.ConfigError for a config
key)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from dlcv import task_registry
from dlcv.data.images import read_rgb, resized, rgb_array
from dlcv.engine.run import Summary
from dlcv.errors import DlcvError
from dlcv.inference import read_any_checkpoint
from dlcv.inference.exported import CHECKPOINT, ExportedModel, model_format


class Model:
    """A trained model as predict runs it: `task` ("classify", "segment" or "ssl"), `classes` (its class
    names; None for an ssl backbone), `path`. Images are file paths, PIL images, uint8 arrays H x W x 3 (or a
    batch N x H x W x 3) or uint8 tensors 3 x H x W (or N x 3 x H x W, as torchvision.io.read_image gives);
    one image gives one result, a list or a batch a list."""

    def __init__(self, path: Path, task: str, classes: list[str] | None, runner, meta: dict[str, Any]):
        self.path, self.task, self.classes = path, task, classes
        self._runner, self._meta = runner, meta

    def __repr__(self) -> str:
        classes = "" if self.classes is None else f", {len(self.classes)} classes"
        return f"dlcv.Model({str(self.path)!r}, {self.task}{classes})"

    def predict(self, images, probabilities: bool = False):
        """Class names (or, with `probabilities`, softmax probabilities: a float32 array of len(classes))."""
        self._require("classify", "predict", "segment() gives a segmentation model's class maps")
        single, arrays = _as_images(images)
        logits = self._logits([resized(a, self._meta["image_size"]) for a in arrays])
        out = list(logits.softmax(1).numpy()) if probabilities else [self.classes[i] for i in logits.argmax(1)]
        return out[0] if single else out

    def segment(self, images):
        """Class maps: uint8 arrays H x W of class indices (into `classes`), each at its image's size."""
        from dlcv.inference.segment import masks_of
        self._require("segment", "segment", "predict() gives a classifier's labels")
        single, arrays = _as_images(images)
        maps = [masks_of(self._runner.logits, _batch([a]))[0].numpy() for a in arrays]
        return maps[0] if single else maps

    def embed(self, images):
        """Feature vectors (float32): a classifier's second-last layer (the input of its last one) of the plain
        images, or an ssl checkpoint's backbone features."""
        if self.task == "segment":
            raise DlcvError(f"{self.path}: embed() needs a classifier or an ssl backbone, not a segmentation model")
        single, arrays = _as_images(images)
        batch = _batch([resized(a, self._meta["image_size"]) for a in arrays])
        feats = torch.cat([self._runner.features(chunk).cpu() for chunk in batch.split(self._runner.batch_size)])
        return feats[0].numpy() if single else list(feats.numpy())

    def _require(self, task: str, method: str, hint: str) -> None:
        if self.task != task:
            raise DlcvError(f"{self.path} is a {self.task} model: {method}() needs a {task} model ({hint})")

    def _logits(self, arrays: list[np.ndarray]) -> torch.Tensor:
        batch = _batch(arrays)
        return torch.cat([self._runner.logits(chunk).cpu() for chunk in batch.split(self._runner.batch_size)])


def load(path: str | Path, device: str = "auto", precision: str = "auto", tta: bool = True,
         batch_size: int | None = None) -> Model:
    """A checkpoint (`classify`, `segment` or `ssl`), or a file of `dlcv export` (ONNX, TorchScript), ready to
    run as the predict commands run it: `precision` auto is the one its run validated in (an exported file:
    fp32), `tta=False` drops a checkpoint's test-time views, `batch_size` images per forward pass."""
    from dlcv.engine.distributed import pick_device
    from dlcv.inference.exported import check_run_options
    path, dev = Path(path), pick_device(device)
    if model_format(path) != CHECKPOINT:
        runner = ExportedModel(path, dev, batch_size)
        check_run_options(runner, tta, precision)
        return Model(path, runner.task, runner.classes, runner, runner.meta)
    state, module = read_any_checkpoint(path)
    task = state["task"]
    if not tta and "preprocess" in state:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    if task == "classify":
        runner = module.Classifier.from_checkpoint(state, dev, precision, batch_size, str(path))
        return Model(path, task, state["classes"], runner, state["preprocess"])
    if task == "segment":
        runner = module.Segmenter.from_checkpoint(state, dev, precision, batch_size, str(path))
        return Model(path, task, module.segment_classes(state), runner, state["preprocess"])
    runner = module.Embedder(state, dev, precision, batch_size, str(path))
    return Model(path, task, None, runner, runner.meta)


def train(task: str, recipe: str | Path | dict | None = None, out: str | Path | None = None, *,
          resume: bool = False, **overrides) -> Summary:
    """Trains as `dlcv TASK-COMMAND -c RECIPE --out OUT --set KEY=VALUE ...` does (the same checks, run
    folder and resume) and returns the run's summary (summary.json). `recipe`: a shipped recipe's name, a
    YAML file or a mapping; `overrides`: config keys, dotted (`**{"train.epochs": 2}`) or as sections
    (`train={"epochs": 2}`)."""
    from dlcv.cli import training_run
    names = [e.name for e in task_registry.TASKS]
    if task not in names:
        raise DlcvError(f"unknown task {task!r}; one of {', '.join(names)}")
    sets = [f"{key}={json.dumps(value)}" for key, value in _dotted(overrides)]
    trainer, _ = training_run(task_registry.task(task), str(recipe) if isinstance(recipe, Path) else recipe,
                              sets, None if out is None else str(out), resume)
    return trainer.fit()


def _dotted(values: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _as_images(images) -> tuple[bool, list[np.ndarray]]:
    """(whether one image was given, each image as H x W x 3 uint8 RGB)."""
    if isinstance(images, (str, Path, Image.Image)):
        return True, [_one(images)]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return False, [_one(image) for image in images]
        return True, [_one(images)]
    if isinstance(images, Sequence) and images:
        return False, [_one(image) for image in images]
    raise DlcvError(f"images: expected a path, a PIL image, a uint8 array or tensor, or a list of them; got "
                    f"{type(images).__name__}")


def _one(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return rgb_array(image)
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DlcvError(f"images: a {image.dtype} array; give uint8 pixels (0-255), e.g. np.asarray(PIL image) "
                            "or torchvision.io.read_image")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)
        raise DlcvError(f"images: an array of shape {tuple(image.shape)}; expected H x W x 3 (or a tensor 3 x H x W)")
    raise DlcvError(f"images: cannot read a {type(image).__name__} as an image")


def _batch(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([a.transpose(2, 0, 1) for a in arrays]))
