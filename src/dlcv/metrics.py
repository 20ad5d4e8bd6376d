"""The scores, as pure functions: the course's mIoU (its exact semantics), whole-set accuracy matched by
file name, and the k-NN accuracy that monitors self-supervised features."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dlcv.data.masks import IGNORE, NUM_CLASSES, SCORED, MaskClasses


def confusion_of(truth: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """num_classes x num_classes pixel counts (rows: truth, columns: prediction); truth pixels of no class
    (IGNORE) are left out."""
    keep = truth.ravel() != IGNORE
    index = truth.astype(np.int64).ravel()[keep] * num_classes + pred.astype(np.int64).ravel()[keep]
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _iou(confusion: np.ndarray, c: int) -> float:
    tp = confusion[c, c]
    denominator = confusion[:, c].sum() + confusion[c, :].sum() - tp
    return float(tp / denominator) if denominator else math.nan


def course_iou(confusion: np.ndarray) -> tuple[list[float], float]:
    """The course evaluator's IoU from a 7x7 confusion matrix (rows: truth, columns: prediction) summed
    over the WHOLE set: IoU_c = TP / (TP + FP + FN) for c in 0..5, where FP and FN include pixels of
    unknown (6); mIoU = mean of the six. An empty class gives NaN, as in the official script."""
    confusion = np.asarray(confusion, dtype=np.float64)
    ious = [_iou(confusion, c) for c in range(SCORED)]
    return ious, sum(ious) / SCORED


def mean_iou(confusion: np.ndarray) -> tuple[list[float], float]:
    """Per-class IoU over the whole set of a dataset's own classes and their mean over the classes present
    in the truth or the predictions (an absent class is NaN and left out of the mean, as mmsegmentation's
    mIoU); NaN when there is none."""
    confusion = np.asarray(confusion, dtype=np.float64)
    ious = [_iou(confusion, c) for c in range(len(confusion))]
    present = [iou for iou in ious if not math.isnan(iou)]
    return ious, sum(present) / len(present) if present else math.nan


def segmentation_iou(confusion: np.ndarray, table: MaskClasses) -> tuple[list[float], float]:
    """The mIoU a dataset's mask classes call for: the course's evaluator for P3, else mean_iou."""
    return course_iou(confusion) if table.course else mean_iou(confusion)


def accuracy_by_filename(truth_names: Sequence[str], truth_labels: Sequence[str], pred_names: Sequence[str],
                         pred_labels: Sequence[str]) -> tuple[float, int, int, int]:
    """SPEC 3: predictions matched to ground truth by file name; accuracy = correct / #ground truth.
    Returns (accuracy, correct, total, missing predictions)."""
    predicted = dict(zip(pred_names, pred_labels))
    correct = sum(predicted.get(n) == label for n, label in zip(truth_names, truth_labels))
    missing = sum(n not in predicted for n in truth_names)
    return correct / len(truth_names), correct, len(truth_names), missing


def knn_accuracy(train_feats: torch.Tensor, train_y: torch.Tensor, val_feats: torch.Tensor, val_y: torch.Tensor,
                 k: int, temperature: float, num_classes: int) -> float:
    """Cosine-similarity k-NN with exp(sim / T) weighted votes, in fp32 whatever autocast is active (the
    monitor runs inside the evaluation's autocast; bf16 similarities would also blur the ranking)."""
    with torch.autocast(train_feats.device.type, enabled=False):
        train_feats, val_feats = F.normalize(train_feats.float(), dim=1), F.normalize(val_feats.float(), dim=1)
        k = min(k, len(train_y))
        correct = 0
        for chunk, y in zip(val_feats.split(1024), val_y.split(1024)):
            sims, idx = (chunk @ train_feats.T).topk(k, dim=1)
            votes = torch.zeros(len(chunk), num_classes, device=chunk.device)
            # weights relative to each row's nearest (the vote's argmax is the same): exp(1 / T) overflows
            # float32 from T < 0.012 on
            votes.scatter_add_(1, train_y[idx], ((sims - sims[:, :1]) / temperature).exp())
            correct += (votes.argmax(1) == y).sum().item()
    return correct / len(val_y)
