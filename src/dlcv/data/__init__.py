"""Data: dataset layouts, image files, label formats, splits held in memory or streamed, synthetic data and
device-side augmentation."""
