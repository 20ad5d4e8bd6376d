"""P1 image classification as a thin task over the engine: in-memory uint8 images on the device,
batch augmentation there, cross-entropy, whole-set accuracy, feature snapshots for PCA / t-SNE."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.transforms import v2

from dlcv import config as config_mod
from dlcv.data import augment, labels as labels_mod
from dlcv.data.images import load_images
from dlcv.data.preprocess import Preprocess
from dlcv.engine import batches, checkpoint
from dlcv.engine.task import Context
from dlcv.errors import DlcvError
from dlcv.inference.classify import Classifier
from dlcv.models import create_model, list_models, model_spec
from dlcv.task_registry import registered
from dlcv.tasks import ModelTask, validate_classes
from dlcv.viz import figures

log = logging.getLogger("dlcv")

ENTRY = registered(__name__)

DEFAULTS: dict[str, Any] = {
    "task": ENTRY.name,
    "data": {"root": None, "train_dir": "train_50", "val_dir": "val_50", "train_csv": None, "val_csv": None,
             "image_size": 32, "input_size": None, "mean": None, "std": None,
             "cache_dir": None, "limit_train": None, "limit_val": None, "val_fraction": 0.1},
    "model": {"name": "resnet50_cifar"},
    "augment": config_mod.dataclass_defaults(augment.AugmentSpec),
    "loss": {"label_smoothing": 0.0},
    # batch-level mixing of training images and their labels (torchvision.transforms.v2 CutMix / MixUp, one
    # of the two per batch when both are on): Beta(alpha, alpha) mixing ratios; 0 = off
    "mix": {"cutmix_alpha": 0.0, "mixup_alpha": 0.0},
    # test-time augmentation in validation AND predict (saved in the checkpoint): see inference.classify.tta_logits
    "tta": {"flip": False, "translate": 0},
    "snapshot": {"tsne_perplexity": 30.0},
}
TYPES = {"augment.resized_crop_scale": list, "augment.color_jitter": list, "data.val_dir": str, "data.train_csv": str, "data.val_csv": str,
         "data.input_size": int, "data.cache_dir": str,
         "data.limit_train": int, "data.limit_val": int}


def choices() -> dict[str, tuple]:
    return {"augment.pad_mode": ("zeros", "reflect", "replicate"), "model.name": tuple(list_models("classify"))}


RANGES = {
    "data.image_size": config_mod.IMAGE_SIDE,
    "data.input_size": config_mod.IMAGE_SIDE_OR_NULL,
    "data.limit_val": config_mod.COUNT_OR_NULL,
    "loss.label_smoothing": config_mod.LABEL_SMOOTHING,
    "mix.cutmix_alpha": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "mix.mixup_alpha": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "augment.crop_padding": (lambda v: v >= 0, "a whole number >= 0"),
    "augment.cutout": (lambda v: v >= 0, "a whole number >= 0"),
    "augment.rotation": (lambda v: v >= 0, "a number of degrees >= 0"),
    "augment.resized_crop_scale": config_mod.FRACTION_RANGE,
    "tta.translate": (lambda v: v >= 0, "a whole number of pixels >= 0"),
}


def check_sizes_against_input(cfg: dict) -> None:
    """Pixel amounts that only make sense below the model input's side (padding by more than the image
    crops mostly padding, and reflect padding fails outright)."""
    side = cfg["data"]["input_size"] or cfg["data"]["image_size"]
    for key in ("augment.crop_padding", "augment.cutout", "tta.translate"):
        value = config_mod.get(cfg, key)
        if side is not None and value is not None and value >= side:
            raise config_mod.ConfigError(f"config key '{key}': invalid value {value!r}; expected less than the "
                                         f"model input side, {side} px (data.input_size or data.image_size)")


SCHEMA = config_mod.Schema(DEFAULTS, choices, TYPES, RANGES, (check_sizes_against_input,))


def _take(files: list[Path], labels: list[str], keep: list[int]):
    return [files[i] for i in keep], [labels[i] for i in keep]


def _subset(files: list[Path], labels: list[str], limit: int | None, seed: int):
    return _take(files, labels, batches.seeded_subset(len(files), limit, seed))


def _holdout(files: list[Path], labels: list[str], fraction: float, seed: int):
    """(train files, train labels, val files, val labels): a seeded `fraction` of the files held out."""
    if not 0 < fraction < 1:
        raise DlcvError(f"data.val_fraction must be in (0, 1) when data.val_dir is null, got {fraction}")
    val = batches.seeded_subset(len(files), max(1, round(fraction * len(files))), seed)
    train = sorted(set(range(len(files))) - set(val))
    return (*_take(files, labels, train), *_take(files, labels, val))


def _mixer(mix: dict[str, float], num_classes: int):
    """torchvision's CutMix and/or MixUp on a training batch (images, labels) -> (mixed images, soft labels);
    None when both are off."""
    mixers = [v2.CutMix(alpha=mix["cutmix_alpha"], num_classes=num_classes)] if mix["cutmix_alpha"] > 0 else []
    mixers += [v2.MixUp(alpha=mix["mixup_alpha"], num_classes=num_classes)] if mix["mixup_alpha"] > 0 else []
    return v2.RandomChoice(mixers) if mixers else None


class ClassifyTask(ModelTask):
    name = ENTRY.name
    monitor = "val_acc"

    def setup(self, ctx: Context) -> None:
        d, seed = self.cfg["data"], self.cfg["train"]["seed"]
        root = Path(d["root"])
        train_files, train_labels = labels_mod.labelled_split(root / d["train_dir"],
                                                              labels_mod.resolve_path(root, d["train_csv"]))
        if d["val_dir"] is None:  # no validation folder (mini-ImageNet): hold out a seeded fraction of train
            train_files, train_labels, val_files, val_labels = _holdout(train_files, train_labels,
                                                                        d["val_fraction"], seed)
        else:
            val_files, val_labels = labels_mod.labelled_split(root / d["val_dir"],
                                                              labels_mod.resolve_path(root, d["val_csv"]))
        train_files, train_labels = _subset(train_files, train_labels, d["limit_train"], seed)
        val_files, val_labels = _subset(val_files, val_labels, d["limit_val"], seed)
        self.classes = labels_mod.sorted_classes(train_labels)
        self.val_files = val_files
        device = ctx.device
        self.train_x = load_images(train_files, d["image_size"], d["cache_dir"]).to(device)
        self.train_y = torch.tensor(labels_mod.encode(train_labels, self.classes, "training set"), device=device)
        self.val_x = load_images(val_files, d["image_size"], d["cache_dir"]).to(device)
        val_source = f"validation set {d['val_dir'] or '(held out of the training set)'}"
        self.val_y = torch.tensor(labels_mod.encode(val_labels, self.classes, val_source), device=device)
        self.meta = {"image_size": d["image_size"], "input_size": d["input_size"], "mean": d["mean"],
                     "std": d["std"], "tta": self.cfg["tta"]}
        self.preprocess = Preprocess(self.meta, device)
        self.mix = _mixer(self.cfg["mix"], len(self.classes))
        self.aug = augment.AugmentSpec(**self.cfg["augment"])
        self.first_flip = torch.rand(len(self.train_y), generator=torch.Generator().manual_seed(seed)).lt(0.5).to(device)
        self.confusion = MulticlassConfusionMatrix(len(self.classes)).to(device)
        log.info("classify: %d train / %d val images, %d classes, cache size %d px, model input %s px",
                 len(train_files), len(val_files), len(self.classes), d["image_size"],
                 d["input_size"] or d["image_size"])

    def build_model(self, ctx: Context) -> nn.Module:
        m = self.cfg["model"]
        model = create_model(m["name"], num_classes=len(self.classes), weights=m["weights"], **m["options"])
        if model_spec(m["name"]).init_from_data:  # e.g. cifar_convnet's whitening stem: 5,000 images like
            every = max(1, len(self.train_x) // 5000)  # airbench, evenly spaced: every class is in (files sort by class)
            model.init_from_data(self.preprocess(self.train_x[::every][:5000]).to(ctx.device))
        return model

    def num_train(self) -> int:
        return len(self.train_y)

    def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
        idx = indices.to(ctx.device)
        flip = None
        if self.aug.alternate_flip:  # airbench: each image flipped in every other epoch, from a seeded start
            flip = self.first_flip[idx] ^ bool(epoch % 2 == 0)
        x = self.preprocess(self.train_x[idx], self.aug, gen, global_size, offset, flip)
        return ctx.images(x), self.train_y[idx]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        if self.mix is not None:  # draws from the global RNG, which checkpoints keep: resume stays exact
            x, y = self.mix(x, y)
        return F.cross_entropy(model(x), y, label_smoothing=self.cfg["loss"]["label_smoothing"])

    def _classifier(self, ctx: Context, model: nn.Module) -> Classifier:
        """`model` as validation, snapshots and predict run it (what a checkpoint of the run records)."""
        return Classifier(model, self.cfg["model"]["name"], self.meta, ctx.numerics,
                          self.cfg["train"]["eval_batch_size"], ctx.device)

    def evaluate(self, ctx: Context, model: nn.Module) -> dict[str, Any]:
        """Accuracy over ALL validation images (the report averaged per-batch accuracies instead)."""
        matrix, loss_sum = validate_classes(ctx, self.confusion, self._classifier(ctx, model), self.val_x, self.val_y)
        total = matrix.sum()
        self.last_confusion = matrix
        per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
        return {"val_loss": loss_sum / total, "val_acc": float(matrix.trace() / total),
                "per_class_acc": {c: round(float(a), 4) for c, a in zip(self.classes, per_class)}}

    def snapshot(self, ctx: Context, model: nn.Module, epoch: int) -> None:
        """Second-last-layer features of the whole val set, kept for the PCA / t-SNE figures."""
        if not ctx.is_main:
            return
        classifier = self._classifier(ctx, model)
        chunks = torch.arange(len(self.val_y), device=ctx.device).split(classifier.batch_size)
        feats = torch.cat([classifier.features(self.val_x[idx]) for idx in chunks])
        checkpoint.save_snapshot(ctx.run.snapshots / f"features_epoch_{epoch:03d}.pt",
                                 {"task": self.name, "epoch": epoch,
                                  "features": feats.bfloat16(),  # half the size; float16 could overflow
                                  "labels": self.val_y.cpu(), "classes": self.classes})

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        fig_dir = ctx.run.figures
        if rows:
            figures.training_curves(rows, fig_dir / "training_curves.png")
        if getattr(self, "last_confusion", None) is not None:
            figures.confusion_matrix(self.last_confusion, self.classes, fig_dir / "confusion_matrix.png")
            per_class = self.last_confusion.diagonal() / np.maximum(self.last_confusion.sum(1), 1)
            figures.per_class_bars(per_class, self.classes, "per-class validation accuracy",
                                   fig_dir / "per_class_accuracy.png")
        snaps = sorted(ctx.run.snapshots.glob("features_epoch_*.pt"))
        seed, perplexity = self.cfg["train"]["seed"], self.cfg["snapshot"]["tsne_perplexity"]
        for i, snap in enumerate(snaps):
            state = checkpoint.load_snapshot(snap, self.name)
            feats, labels_, epoch = state["features"].float().numpy(), state["labels"].numpy(), state["epoch"]
            if i == len(snaps) - 1:
                figures.scatter_by_class(figures.embed_2d(feats, "pca", seed), labels_,
                                         f"PCA of val features, epoch {epoch}", fig_dir / f"pca_epoch_{epoch:03d}.png",
                                         self.classes)
            figures.scatter_by_class(figures.embed_2d(feats, "tsne", seed, perplexity), labels_,
                                     f"t-SNE of val features, epoch {epoch}", fig_dir / f"tsne_epoch_{epoch:03d}.png",
                                     self.classes)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": self.classes, "preprocess": self.meta}

    def data_identity(self) -> dict[str, Any]:
        return {**super().data_identity(), "classes": self.classes}


TASK = ClassifyTask
