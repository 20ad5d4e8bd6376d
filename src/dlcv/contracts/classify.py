"""P1 / P2's graded commands from a trained model (a checkpoint, or an exported file): predictions for a
folder (hw1_1.sh) or a CSV (hw1_2.sh), accuracy matched by file name (`eval acc`), and PCA / t-SNE of a
checkpoint's features."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dlcv import metrics
from dlcv.data import labels as labels_mod
from dlcv.data.images import list_images, load_images
from dlcv.errors import DlcvError
from dlcv.inference.classify import Classifier, read_checkpoint
from dlcv.inference.exported import CHECKPOINT, check_run_options, model_format, open_exported
from dlcv.viz import figures

log = logging.getLogger("dlcv")


@dataclass(frozen=True)
class ModelInfo:
    """What the commands read of a model file besides its predictions: its class names and where its training
    labels came from (an `id,filename,label` CSV: P2, or `{label}_{id}` file names: P1)."""
    classes: list[str]
    trained_on_csv: bool | None  # None: unknown (an export without the record)


def load_classifier(model_path: str | Path, device: torch.device, tta: bool = True, precision: str = "auto",
                    batch_size: int | None = None, command: str = "classify predict"):
    """A classify checkpoint's model as its run validated it (inference.classify.Classifier), or an exported
    classifier (inference.exported.ExportedModel, fp32), and its ModelInfo. `tta=False` drops the saved
    test-time augmentation (plain predictions); `precision` and `batch_size`: see Classifier.from_checkpoint."""
    if model_format(model_path) != CHECKPOINT:
        model = open_exported(model_path, "classify", command, device, batch_size)
        check_run_options(model, tta, precision)
        labels_from = model.metadata.get("labels_from")
        return model, ModelInfo(model.classes, None if labels_from is None else labels_from == "csv")
    state = read_checkpoint(model_path)
    if not tta:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    classifier = Classifier.from_checkpoint(state, device, precision, batch_size, str(model_path))
    return classifier, ModelInfo(state["classes"], state["config"]["data"].get("train_csv") is not None)


def warn_if_other_problem(model_path: str | Path, info: ModelInfo, expects_csv_labels: bool) -> None:
    """P1 (hw1_1.sh, folder labels) and P2 (hw1_2.sh, CSV labels) models are both classifiers: a
    model of the other problem runs, but its answers are another class set's."""
    if info.trained_on_csv is not None and info.trained_on_csv != expects_csv_labels:
        classes = info.classes
        shown = ", ".join(classes[:3]) + (f", ..., {classes[-1]}" if len(classes) > 3 else "")
        log.warning("%s was trained on %s (%d classes: %s): is it the other problem's model?", model_path,
                    "an id,filename,label CSV" if info.trained_on_csv else "a {label}_{id} image folder",
                    len(classes), shown)


def infer_logits(classifier, files: Sequence[Path],
                 with_features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """fp32 logits (and optionally features) of image files, in the given order."""
    images = load_images(files, classifier.meta["image_size"], use_cache=False)
    logits, feats = [], []
    for chunk in images.split(classifier.batch_size):
        if with_features:
            feats.append(classifier.features(chunk))
        logits.append(classifier.logits(chunk).cpu())
    return torch.cat(logits).numpy(), torch.cat(feats).numpy() if with_features else None


def infer(classifier, files: Sequence[Path], with_features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted class indices (and optionally features) for image files, in the given order."""
    logits, feats = infer_logits(classifier, files, with_features)
    return logits.argmax(1), feats


def topk_header(k: int) -> list[str]:
    """`--topk K`'s columns after the graded ones: label_1, prob_1, ..., label_K, prob_K."""
    return [column for i in range(1, k + 1) for column in (f"label_{i}", f"prob_{i}")]


def _predictions(logits: np.ndarray, classes: Sequence[str], topk: int, where) -> list[list]:
    """Per image: the predicted class name, then with `topk` K the K most probable class names with their
    softmax probabilities (6 decimals)."""
    if topk > len(classes):
        raise DlcvError(f"--topk {topk}: {where} has only {len(classes)} classes")
    rows = [[classes[i]] for i in logits.argmax(1)]
    if topk:
        probs = torch.from_numpy(logits).softmax(1)
        top = probs.topk(topk, dim=1)
        for row, p, idx in zip(rows, top.values.tolist(), top.indices.tolist()):
            row.extend(v for c, q in zip(idx, p) for v in (classes[c], f"{q:.6f}"))
    return rows


def predict_folder(model_path: str | Path, image_dir: str | Path, out_csv: str | Path, device: torch.device,
                   batch_size: int | None = None, tta: bool = True, precision: str = "auto", topk: int = 0) -> int:
    """Writes `filename,label` for every image of the folder, sorted by file name (with `topk` K, then the K
    most probable classes and their probabilities). Labels come from the model only, never from file names;
    the matching of names to predictions is by construction."""
    classifier, info = load_classifier(model_path, device, tta, precision, batch_size)
    warn_if_other_problem(model_path, info, expects_csv_labels=False)
    files = list_images(image_dir)
    logits, _ = infer_logits(classifier, files)
    rows = _predictions(logits, info.classes, topk, model_path)
    labels_mod.write_csv(out_csv, ["filename", "label", *topk_header(topk)],
                         [[f.name, *r] for f, r in zip(files, rows)])
    return len(files)


def predict_csv(model_path: str | Path, in_csv: str | Path, image_dir: str | Path, out_csv: str | Path,
                device: torch.device, batch_size: int | None = None, tta: bool = True,
                precision: str = "auto", topk: int = 0) -> int:
    """SPEC 4 (hw1_2.sh): `id,filename,label` with id and filename copied from IN_CSV in its order; the
    input's label column, if any, is ignored (it may be `None`). `topk`: as predict_folder."""
    rows = labels_mod.read_csv_rows(in_csv, ("id", "filename"))
    files = labels_mod.files_in(image_dir, [r["filename"] for r in rows], in_csv)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DlcvError(f"{in_csv}: {len(missing)} listed image(s) not found in {image_dir}, e.g. {missing[0]}")
    classifier, info = load_classifier(model_path, device, tta, precision, batch_size, "ssl predict")
    warn_if_other_problem(model_path, info, expects_csv_labels=True)
    logits, _ = infer_logits(classifier, files)
    predictions = _predictions(logits, info.classes, topk, model_path)
    labels_mod.write_csv(out_csv, ["id", "filename", "label", *topk_header(topk)],
                         [[r["id"], r["filename"], *p] for r, p in zip(rows, predictions)])
    return len(rows)


MIN_EMBED_IMAGES = 5  # fewer points make no PCA / t-SNE picture (t-SNE needs more points than 3 x perplexity 2)


def embed_figure(ckpt: str | Path, image_dir: str | Path, method: str, out: str | Path,
                 device: torch.device, batch_size: int | None = None, precision: str = "auto") -> None:
    """PCA / t-SNE of a checkpoint's features on a folder, coloured by the class in the file names
    (`{label}_{id}.png`) or, for unlabelled folders, by the predicted class."""
    files = list_images(image_dir)
    if len(files) < MIN_EMBED_IMAGES:
        raise DlcvError(f"{image_dir}: {len(files)} image(s); a {method.upper()} picture needs at least "
                        f"{MIN_EMBED_IMAGES}")
    state = read_checkpoint(ckpt)
    classifier = Classifier.from_checkpoint(state, device, precision, batch_size, str(ckpt))
    preds, feats = infer(classifier, files, with_features=True)
    names = [labels_mod.label_from_filename(f) for f in files]
    if all(n is not None for n in names) and set(names) <= set(state["classes"]):
        colours, source = labels_mod.encode(names, state["classes"], str(image_dir)), "true"
    else:
        colours, source = preds, "predicted"
    points = figures.embed_2d(feats, method, state["config"]["train"]["seed"])
    figures.scatter_by_class(points, colours, f"{method.upper()} of {Path(image_dir).name} features "
                             f"(epoch {state['epoch']}, coloured by {source} class)", out)


def accuracy_of_csvs(gt_csv: str | Path, pred_csv: str | Path) -> tuple[float, int, int, int]:
    """`eval acc`: a predictions CSV scored against a ground-truth CSV (metrics.accuracy_by_filename)."""
    return metrics.accuracy_by_filename(*labels_mod.read_labelled_csv(gt_csv),
                                        *labels_mod.read_labelled_csv(pred_csv, allow_empty=True))
