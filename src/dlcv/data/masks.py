"""Segmentation masks in the course palette (SPEC 2): colour <-> class."""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
UNKNOWN = 6
PALETTE = np.array([(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
                    (0, 0, 0)], dtype=np.uint8)
RED_CODE = 4  # pure red: not a class of the course; see rgb_to_class
# code = 4R + 2G + B after thresholding each channel at >= 128 -> class (RED_CODE maps to -1)
CODE_TO_CLASS = np.array([6, 4, 3, 0, -1, 2, 1, 5], dtype=np.int8)


def rgb_to_class(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W int8 class map; -1 where the pixel is red (code 4), which the
    course's evaluator maps to no class: callers decide (and report) how to treat it."""
    bits = (rgb >= 128).astype(np.uint8)
    return CODE_TO_CLASS[4 * bits[..., 0] + 2 * bits[..., 1] + bits[..., 2]]


def class_to_rgb(classes: np.ndarray) -> np.ndarray:
    return PALETTE[classes]
