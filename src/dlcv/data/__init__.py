"""Data: image files, label formats, tensor caches, synthetic data and device-side augmentation."""
