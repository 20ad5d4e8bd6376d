"""The scores (dlcv/metrics.py) against hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from dlcv import metrics


def test_course_iou_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 6, 6, 2, 3, 4, 5, 5])
    pred = np.array([0, 0, 1, 1, 6, 0, 6, 2, 3, 4, 5, 0])
    ious, miou = metrics.course_iou(metrics.confusion_of(truth, pred))
    # class 0: TP 2; FP: truth 6 predicted 0, truth 5 predicted 0 -> 2; FN: truth 0 predicted 1 -> 1
    # class 1: TP 1; FP 1 (truth 0); FN 1 (truth 1 predicted unknown 6)
    # classes 2, 3, 4: perfect; class 5: TP 1, FN 1
    assert ious == pytest.approx([2 / 5, 1 / 3, 1, 1, 1, 1 / 2])
    assert miou == pytest.approx((2 / 5 + 1 / 3 + 3 + 1 / 2) / 6)
    ious, miou = metrics.course_iou(metrics.confusion_of(np.array([0, 1]), np.array([0, 1])))
    assert math.isnan(ious[2]) and math.isnan(miou)  # an empty class is NaN, as the official script


def test_knn_accuracy_hand_computed():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    val = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.0]])
    val_y = torch.tensor([0, 1, 1])  # the last one is wrong
    assert metrics.knn_accuracy(train, train_y, val, val_y, k=2, temperature=0.1, num_classes=2) == pytest.approx(2 / 3)


# -- pre-training runs ---------------------------------------------------------------------------------------


def test_accuracy_by_filename_matches_by_name_and_counts_missing_as_wrong():
    truth = (["a.png", "b.png", "c.png", "d.png"], ["1", "2", "3", "4"])
    pred = (["d.png", "b.png", "a.png", "x.png"], ["4", "0", "1", "3"])  # other order, b wrong, c missing
    assert metrics.accuracy_by_filename(*truth, *pred) == (0.5, 2, 4, 1)
