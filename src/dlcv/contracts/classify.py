"""P1 / P2's graded commands from a trained model (a checkpoint, or an exported file): predictions for a
folder (hw1_1.sh; any folder of images, subfolders included) or a CSV (hw1_2.sh), accuracy matched by file
name (`eval acc`, against a CSV or a labelled folder), and PCA / t-SNE of a checkpoint's features."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dlcv import metrics
from dlcv.data import labels as labels_mod, layouts
from dlcv.data.images import images_under, require_images
from dlcv.data.sources import Images, Source
from dlcv.errors import DlcvError
from dlcv.inference.classify import Classifier, read_checkpoint
from dlcv.inference.exported import CHECKPOINT, check_run_options, model_format, open_exported
from dlcv.viz import figures

log = logging.getLogger("dlcv")


@dataclass(frozen=True)
class ModelInfo:
    """What the commands read of a model file besides its predictions: its class names, and the course problem
    and the layout its run recorded (data/layouts.py; None where a model records none)."""
    classes: list[str]
    problem: str | None
    layout: str | None


def load_classifier(model_path: str | Path, device: torch.device, tta: bool = True, precision: str = "auto",
                    batch_size: int | None = None, command: str = "classify predict"):
    """A classify checkpoint's model as its run validated it (inference.classify.Classifier), or an exported
    classifier (inference.exported.ExportedModel, fp32), and its ModelInfo. `tta=False` drops the saved
    test-time augmentation (plain predictions); `precision` and `batch_size`: see Classifier.from_checkpoint."""
    if model_format(model_path) != CHECKPOINT:
        model = open_exported(model_path, "classify", command, device, batch_size)
        check_run_options(model, tta, precision)
        return model, ModelInfo(model.classes, model.metadata.get("problem"), model.metadata.get("layout"))
    state = read_checkpoint(model_path)
    if not tta:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    classifier = Classifier.from_checkpoint(state, device, precision, batch_size, str(model_path))
    recorded = state.get("inputs", {})
    return classifier, ModelInfo(state["classes"], recorded.get("problem"), recorded.get("layout"))


def warn_if_other_problem(model_path: str | Path, info: ModelInfo, problem: str) -> None:
    """P1 (hw1_1.sh) and P2 (hw1_2.sh) models are both classifiers: a model its run recorded as the other
    course problem's runs, but its answers are another class set's."""
    if info.problem not in (None, problem):
        classes = info.classes
        shown = ", ".join(classes[:3]) + (f", ..., {classes[-1]}" if len(classes) > 3 else "")
        log.warning("%s was trained on %s (%d classes: %s): is it the other problem's model?", model_path,
                    layouts.DESCRIPTIONS.get(info.layout, "another dataset"), len(classes), shown)


def infer_logits(classifier, files: Sequence[Path],
                 with_features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """fp32 logits (and optionally features) of image files, in the given order, decoded by DataLoader workers a
    batch at a time (a folder of any size)."""
    images = Source(Images(files, classifier.meta["image_size"]), torch.device("cpu"), in_memory=False)
    chunks = torch.arange(len(files)).split(classifier.batch_size)
    logits, feats = [], []
    for _, chunk in images.iterate(chunks):
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
    """Writes `filename,label` for every image under the folder (subfolders included: `cat/001.jpg`), sorted
    by path, with the model's class names (with `topk` K, then the K most probable classes and their
    probabilities). Labels come from the model only, never from file names; the matching of names to
    predictions is by construction."""
    classifier, info = load_classifier(model_path, device, tta, precision, batch_size)
    warn_if_other_problem(model_path, info, "p1")
    files = require_images(images_under(image_dir)[0], image_dir)
    logits, _ = infer_logits(classifier, files)
    rows = _predictions(logits, info.classes, topk, model_path)
    names = layouts.relative_names(Path(image_dir), files)
    labels_mod.write_csv(out_csv, ["filename", "label", *topk_header(topk)],
                         [[n, *r] for n, r in zip(names, rows)], predictions=True)
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
    warn_if_other_problem(model_path, info, "p2")
    logits, _ = infer_logits(classifier, files)
    predictions = _predictions(logits, info.classes, topk, model_path)
    labels_mod.write_csv(out_csv, ["id", "filename", "label", *topk_header(topk)],
                         [[r["id"], r["filename"], *p] for r, p in zip(rows, predictions)], predictions=True)
    return len(rows)


def embed_figure(ckpt: str | Path, image_dir: str | Path, method: str, out: str | Path,
                 device: torch.device, batch_size: int | None = None, precision: str = "auto") -> None:
    """PCA / t-SNE of a checkpoint's features on a folder, coloured by true class where the folder is a
    labelled split (data/layouts.py: class folders, `{label}_{id}` names, FOLDER.csv beside it) of the model's
    classes, else by the predicted class."""
    truth = layouts.labelled_folder(Path(image_dir))
    files = truth.files if truth else require_images(images_under(image_dir)[0], image_dir)
    if len(files) < figures.MIN_EMBED_POINTS:
        raise DlcvError(f"{image_dir}: {len(files)} image(s); a {method.upper()} picture needs at least "
                        f"{figures.MIN_EMBED_POINTS}")
    state = read_checkpoint(ckpt)
    classifier = Classifier.from_checkpoint(state, device, precision, batch_size, str(ckpt))
    preds, feats = infer(classifier, files, with_features=True)
    if truth and set(truth.labels) <= set(state["classes"]):
        colours, source = labels_mod.encode(truth.labels, state["classes"], str(image_dir)), "true"
    else:
        colours, source = preds, "predicted"
    points = figures.embed_2d(feats, method, state["config"]["train"]["seed"])
    figures.scatter_by_class(points, colours, f"{method.upper()} of {Path(image_dir).name} features "
                             f"(epoch {state['epoch']}, coloured by {source} class)", out, state["classes"])


def ground_truth(path: str | Path) -> tuple[list[str], list[str]]:
    """(file names, labels) of a ground-truth CSV, or of a labelled folder (names as predict writes them)."""
    path = Path(path)
    if not path.is_dir():
        return labels_mod.read_labelled_csv(path)
    truth = layouts.labelled_folder(path)
    if truth is None:
        raise DlcvError(f"{path}: not a labelled folder (class folders, {{label}}_{{id}} file names, or "
                        f"{path.name}.csv beside it)")
    return layouts.relative_names(path, truth.files), [labels_mod.canonical(label) for label in truth.labels]


def accuracy_of_csvs(gt: str | Path, pred_csv: str | Path) -> tuple[float, int, int, int]:
    """`eval acc`: a predictions CSV scored against a ground-truth CSV or labelled folder
    (metrics.accuracy_by_filename)."""
    return metrics.accuracy_by_filename(*ground_truth(gt), *labels_mod.read_labelled_csv(pred_csv, allow_empty=True))
