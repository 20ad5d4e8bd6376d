"""P1 / P2's graded commands from a trained checkpoint: predictions for a folder (hw1_1.sh) or a CSV
(hw1_2.sh), accuracy matched by file name (`eval acc`), and PCA / t-SNE of a checkpoint's features."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dlcv import metrics
from dlcv.data import labels as labels_mod
from dlcv.data.images import list_images, load_images
from dlcv.engine import checkpoint
from dlcv.errors import DlcvError
from dlcv.inference.classify import Classifier
from dlcv.viz import figures

log = logging.getLogger("dlcv")


def load_classifier(ckpt_path: str | Path, device: torch.device, tta: bool = True, precision: str = "auto",
                    batch_size: int | None = None) -> tuple[Classifier, dict[str, Any]]:
    """The checkpoint's model as its run validated it, and the checkpoint; `tta=False` drops the saved
    test-time augmentation (plain predictions); `precision` and `batch_size`: see Classifier.from_checkpoint."""
    state = checkpoint.load(ckpt_path, "classify", require=("classes", "preprocess"))
    if not tta:
        state["preprocess"] = {**state["preprocess"], "tta": None}
    return Classifier.from_checkpoint(state, device, precision, batch_size, str(ckpt_path)), state


def warn_if_other_problem(ckpt: str | Path, state: dict[str, Any], expects_csv_labels: bool) -> None:
    """P1 (hw1_1.sh, folder labels) and P2 (hw1_2.sh, CSV labels) models are both classifiers: a
    checkpoint of the other problem runs, but its answers are another class set's."""
    trained_on_csv = state["config"]["data"].get("train_csv") is not None
    if trained_on_csv != expects_csv_labels:
        classes = state["classes"]
        shown = ", ".join(classes[:3]) + (f", ..., {classes[-1]}" if len(classes) > 3 else "")
        log.warning("%s was trained on %s (%d classes: %s): is it the other problem's model?", ckpt,
                    "an id,filename,label CSV" if trained_on_csv else "a {label}_{id} image folder",
                    len(classes), shown)


def infer(classifier: Classifier, files: Sequence[Path],
          with_features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted class indices (and optionally features) for image files, in the given order."""
    images = load_images(files, classifier.meta["image_size"], use_cache=False)
    preds, feats = [], []
    for chunk in images.split(classifier.batch_size):
        if with_features:
            feats.append(classifier.features(chunk))
        preds.append(classifier.logits(chunk).argmax(1).cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).numpy() if with_features else None


def predict_folder(ckpt: str | Path, image_dir: str | Path, out_csv: str | Path, device: torch.device,
                   batch_size: int | None = None, tta: bool = True, precision: str = "auto") -> int:
    """Writes `filename,label` for every image of the folder, sorted by file name. Labels come from the
    model only, never from file names; the matching of names to predictions is by construction."""
    classifier, state = load_classifier(ckpt, device, tta, precision, batch_size)
    warn_if_other_problem(ckpt, state, expects_csv_labels=False)
    files = list_images(image_dir)
    preds, _ = infer(classifier, files)
    classes = state["classes"]
    labels_mod.write_csv(out_csv, ["filename", "label"], [(f.name, classes[p]) for f, p in zip(files, preds)])
    return len(files)


def predict_csv(ckpt: str | Path, in_csv: str | Path, image_dir: str | Path, out_csv: str | Path,
                device: torch.device, batch_size: int | None = None, tta: bool = True,
                precision: str = "auto") -> int:
    """SPEC 4 (hw1_2.sh): `id,filename,label` with id and filename copied from IN_CSV in its order; the
    input's label column, if any, is ignored (it may be `None`)."""
    rows = labels_mod.read_csv_rows(in_csv, ("id", "filename"))
    files = labels_mod.files_in(image_dir, [r["filename"] for r in rows], in_csv)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DlcvError(f"{in_csv}: {len(missing)} listed image(s) not found in {image_dir}, e.g. {missing[0]}")
    classifier, state = load_classifier(ckpt, device, tta, precision, batch_size)
    warn_if_other_problem(ckpt, state, expects_csv_labels=True)
    preds, _ = infer(classifier, files)
    classes = state["classes"]
    labels_mod.write_csv(out_csv, ["id", "filename", "label"],
                         [(r["id"], r["filename"], classes[p]) for r, p in zip(rows, preds)])
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
    classifier, state = load_classifier(ckpt, device, precision=precision, batch_size=batch_size)
    preds, feats = infer(classifier, files, with_features=True)
    names = [labels_mod.label_from_filename(f) for f in files]
    if all(n is not None for n in names) and set(names) <= set(state["classes"]):
        colours, source = labels_mod.encode(names, state["classes"], str(image_dir)), "true"
    else:
        colours, source = preds, "predicted"
    points = figures.embed_2d(feats, method, state["config"]["train"]["seed"])
    figures.scatter_by_class(points, colours, f"{method.upper()} of {Path(image_dir).name} features "
                             f"(epoch {state['epoch']}, coloured by {source} class)", out, state["classes"])


def accuracy_of_csvs(gt_csv: str | Path, pred_csv: str | Path) -> tuple[float, int, int, int]:
    """`eval acc`: a predictions CSV scored against a ground-truth CSV (metrics.accuracy_by_filename)."""
    return metrics.accuracy_by_filename(*labels_mod.read_labelled_csv(gt_csv),
                                        *labels_mod.read_labelled_csv(pred_csv, allow_empty=True))
