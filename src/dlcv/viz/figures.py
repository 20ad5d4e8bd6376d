"""Matplotlib figures, written atomically (a killed run never leaves a half-written PNG)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dlcv.fileio import atomic_path  # noqa: E402

log = logging.getLogger("dlcv")


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss panel (train/val) and one panel per other per-epoch metric of metrics.csv; a metric is drawn
    at the epochs that have it (validation may run every few epochs: train.eval_every)."""
    skip = {"epoch", "train_loss", "val_loss", "lr", "images_per_s", "seconds"}
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, (int, float))))
    others = [k for k in keys if k not in skip]

    def curve(key):
        points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [e for e, _ in points], [v for _, v in points]

    fig, axes = plt.subplots(1, 1 + len(others), figsize=(4.5 * (1 + len(others)), 3.4), squeeze=False)
    ax = axes[0, 0]
    for key in ("train_loss", "val_loss"):
        if key in keys:
            ax.plot(*curve(key), marker="o", label=key)
    ax.set_xlabel("epoch"), ax.set_title("loss"), ax.legend()
    for ax, key in zip(axes[0, 1:], others):
        ax.plot(*curve(key), marker="o", color="tab:green")
        ax.set_xlabel("epoch"), ax.set_title(key)
    return save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = min(14, 3 + 0.22 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    step = max(1, len(classes) // 25)
    ticks = np.arange(0, len(classes), step)
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    acc = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save(fig, path)


def per_class_bars(values: Sequence[float], classes: Sequence[str], title: str, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(classes) + 2), 3.2))
    ax.bar(range(len(values)), values, color="tab:blue")
    step = max(1, len(classes) // 50)
    ax.set_xticks(range(0, len(classes), step), [classes[i] for i in range(0, len(classes), step)],
                  rotation=90, fontsize=7)
    ax.set_ylim(0, 1), ax.set_title(title)
    return save(fig, path)


# fewer points make no PCA / t-SNE picture (t-SNE needs more points than 3 x perplexity 2)
MIN_EMBED_POINTS = 5


def embed_2d(features: np.ndarray, method: str, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D PCA or t-SNE (scikit-learn) of N x D features, N >= MIN_EMBED_POINTS. Features that are all equal
    (copies of one image) are one point, at the origin: scikit-learn's t-SNE would scale its PCA start by their
    spread, 0, and its Barnes-Hut step then crashes the process on the NaNs (a segfault)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if len(features) < MIN_EMBED_POINTS:
        raise ValueError(f"{len(features)} points; a 2-D embedding needs at least {MIN_EMBED_POINTS}")
    if not np.ptp(features, axis=0).any():
        log.warning("all %d feature vectors are equal: the %s picture is a single point", len(features),
                    method.upper() if method == "pca" else "t-SNE")
        return np.zeros((len(features), 2), np.float32)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        # t-SNE on 50 PCA components: the standard speed-up, same picture (van der Maaten's advice).
        if features.shape[1] > 50 and features.shape[0] > 50:
            features = PCA(n_components=50, random_state=seed).fit_transform(features)
        perplexity = min(perplexity, max(2.0, (features.shape[0] - 1) / 3))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)
    raise ValueError(f"method must be pca or tsne, got {method!r}")


# 20 + 20 + 20 distinct colours, then a new marker for every 20 classes: neighbouring class numbers never
# look alike (a continuous colour bar gives classes 17 and 18 almost the same colour)
CATEGORICAL = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors, *plt.get_cmap("tab20c").colors]
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def class_style(label: int, n_classes: int) -> tuple[tuple, str]:
    """(colour, marker) of a class: tab10's colours with dots up to 10 classes, then 20 colours per marker."""
    if n_classes <= 10:
        return plt.get_cmap("tab10").colors[label], "o"
    return CATEGORICAL[label % 20 + 20 * (label // 20 % 3)], MARKERS[label // 20 % len(MARKERS)]


LEGEND_CLASSES = 100  # 4 columns of names; a dataset with more classes gets none (it would outgrow the figure)


def scatter_by_class(points: np.ndarray, labels: Sequence[int], title: str, path: str | Path,
                     class_names: Sequence[str] | None = None) -> Path:
    """One colour and marker per class (class_style), named in a legend beside the points."""
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if labels.size else 1
    columns = 1 + (min(n_classes, LEGEND_CLASSES) - 1) // 25
    fig, ax = plt.subplots(figsize=(6.4 + 1.1 * columns, 6))
    for label in range(n_classes):
        chosen = labels == label
        if chosen.any():
            colour, marker = class_style(label, n_classes)
            ax.scatter(points[chosen, 0], points[chosen, 1], color=colour, marker=marker, s=9, alpha=0.85,
                       linewidths=0, label=class_names[label] if class_names else str(label))
    ax.set_title(title), ax.set_xticks([]), ax.set_yticks([])
    if n_classes <= LEGEND_CLASSES:
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1), ncol=columns, fontsize=7,
                  title_fontsize=8, markerscale=1.4, handletextpad=0.2, columnspacing=0.6, borderaxespad=0)
    return save(fig, path)


def mask_grid(images: np.ndarray, truths: np.ndarray, preds_by_epoch: dict[int, np.ndarray], ids: Sequence[str],
              path: str | Path, class_to_rgb=None, class_names: Sequence[str] | None = None) -> Path:
    """Rows: epochs; for each chosen image three panels: satellite image, ground truth, prediction, in the
    colours of `class_to_rgb` (class indices -> RGB; default: the course's palette); below, the colour of each
    class the masks show, named by `class_names`."""
    from matplotlib.patches import Patch

    if class_to_rgb is None:
        from dlcv.data.masks import CLASS_NAMES as class_names, class_to_rgb

    epochs = sorted(preds_by_epoch)
    cols = 3 * len(ids)
    fig, axes = plt.subplots(len(epochs), cols, figsize=(2.2 * cols, 2.3 * len(epochs)), squeeze=False)
    for r, epoch in enumerate(epochs):
        for j, ident in enumerate(ids):
            panels = (images[j].transpose(1, 2, 0), class_to_rgb(truths[j]), class_to_rgb(preds_by_epoch[epoch][j]))
            for k, (panel, title) in enumerate(zip(panels, (f"{ident} image", "ground truth", f"epoch {epoch}"))):
                ax = axes[r, 3 * j + k]
                ax.imshow(panel)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
    shown = np.unique(np.concatenate([truths.ravel(), *(p.ravel() for p in preds_by_epoch.values())]))
    legend = [Patch(facecolor=class_to_rgb(np.array([[c]], dtype=np.uint8))[0, 0] / 255, edgecolor="#777",
                    label=class_names[c]) for c in shown if 0 <= c < len(class_names or ())]
    legend_height = 0.35 / fig.get_figheight()  # a row of 0.35 inches under the panels
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0))
    return save(fig, path)
