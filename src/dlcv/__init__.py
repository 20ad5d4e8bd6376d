"""dlcv: deep learning for computer vision (classification, BYOL self-supervision, segmentation)."""
__version__ = "0.1.0"
