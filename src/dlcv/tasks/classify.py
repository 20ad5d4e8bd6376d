"""Image classification (P1, P2's transfer runs, a dataset of the user's own) as a thin task over the
engine: uint8 images held on the device or streamed from disk (data/sources.py), batch augmentation on the
device, cross-entropy, whole-set accuracy, feature snapshots for PCA / t-SNE."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.transforms import v2

from dlcv import config as config_mod
from dlcv.data import augment, layouts
from dlcv.data.preprocess import Preprocess
from dlcv.data.sources import Images
from dlcv.engine import checkpoint
from dlcv.engine.task import Context
from dlcv.inference.classify import Classifier
from dlcv.models import create_model, list_models, model_spec
from dlcv.task_registry import registered
from dlcv.tasks import ModelTask, source_of, validate_classes
from dlcv.viz import figures

log = logging.getLogger("dlcv")

ENTRY = registered(__name__)

DEFAULTS: dict[str, Any] = {
    "task": ENTRY.name,
    # train_csv / val_csv: auto = FOLDER.csv beside the split's folder where it exists (data/layouts.py)
    "data": {**layouts.SPLIT_DEFAULTS, "train_csv": layouts.AUTO, "val_csv": layouts.AUTO, "image_size": 32,
             "input_size": None},
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
TYPES = {"augment.resized_crop_scale": list[float], "augment.color_jitter": list[float], "data.train_csv": str, "data.val_csv": str,
         "data.input_size": int, **layouts.SPLIT_TYPES}


def choices() -> dict[str, tuple]:
    return {"augment.pad_mode": ("zeros", "reflect", "replicate"), "model.name": tuple(list_models("classify")),
            **layouts.layout_choices(ENTRY.name)}


RANGES = {
    "data.image_size": config_mod.IMAGE_SIDE,
    "data.input_size": config_mod.IMAGE_SIDE_OR_NULL,
    **layouts.SPLIT_RANGES,
    "loss.label_smoothing": config_mod.LABEL_SMOOTHING,
    "mix.cutmix_alpha": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "mix.mixup_alpha": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "augment.crop_padding": (lambda v: v >= 0, "a whole number >= 0"),
    "augment.cutout": (lambda v: v >= 0, "a whole number >= 0"),
    "augment.rotation": (lambda v: v >= 0, "a number of degrees >= 0"),
    "augment.resized_crop_scale": config_mod.FRACTION_RANGE,
    "tta.translate": (lambda v: v >= 0, "a whole number of pixels >= 0"),
    "augment.color_jitter": (lambda v: config_mod.numbers(v, 4) and min(v) >= 0 and v[3] <= 0.5,
                             "[brightness, contrast, saturation, hue], each >= 0, hue <= 0.5 (as ColorJitter)"),
    "data.val_fraction": (lambda v: 0 < v < 1, "a fraction in (0, 1) held out of train when data.val_dir is null"),
    "snapshot.tsne_perplexity": (lambda v: 0 < v <= 1000, "a number in (0, 1000] (t-SNE's usual: 5 to 50)"),
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


def check_input_fits_model(cfg: dict) -> None:
    """The model input's side is one the model runs on (its strides and pooling leave at least a pixel)."""
    side, name = cfg["data"]["input_size"] or cfg["data"]["image_size"], cfg["model"]["name"]
    smallest = model_spec(name).min_input
    if side < smallest:
        key = "data.input_size" if cfg["data"]["input_size"] else "data.image_size"
        raise config_mod.ConfigError(f"config key '{key}': invalid value {side!r}; model {name} needs inputs of at "
                                     f"least {smallest} px")


SCHEMA = config_mod.Schema(DEFAULTS, choices, TYPES, RANGES, (check_sizes_against_input, check_input_fits_model))


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
        d, seed, device = self.cfg["data"], self.cfg["train"]["seed"], ctx.device
        self.data = layouts.classification(d, seed)
        train, val = self.data.train, self.data.val
        self.classes = self.data.classes
        self.train_x = source_of(d, Images(train.files, d["image_size"]), device, f"training set {train.folder}")
        self.train_y = torch.tensor(train.targets, device=device)
        self.val_x = source_of(d, Images(val.files, d["image_size"]), device, f"validation set {val.folder}")
        self.val_y = torch.tensor(val.targets, device=device)
        self.meta = {"image_size": d["image_size"], "input_size": d["input_size"], "mean": d["mean"],
                     "std": d["std"], "tta": self.cfg["tta"]}
        self.preprocess = Preprocess(self.meta, device)
        self.mix = _mixer(self.cfg["mix"], len(self.classes))
        self.aug = augment.AugmentSpec(**self.cfg["augment"])
        self.first_flip = torch.rand(len(self.train_y), generator=torch.Generator().manual_seed(seed)).lt(0.5).to(device)
        self.confusion = MulticlassConfusionMatrix(len(self.classes)).to(device)
        log.info("classify: layout %s, %d train / %d val images%s, %d classes, cache size %d px, model input %s px",
                 self.data.layout, len(train), len(val), " (held out of the training set)" if self.data.held_out
                 else "", len(self.classes), d["image_size"], d["input_size"] or d["image_size"])

    def build_model(self, ctx: Context) -> nn.Module:
        m = self.cfg["model"]
        model = create_model(m["name"], num_classes=len(self.classes), weights=m["weights"], **m["options"])
        if model_spec(m["name"]).init_from_data:  # e.g. cifar_convnet's whitening stem: 5,000 images like
            every = max(1, len(self.train_x) // 5000)  # airbench, evenly spaced: every class is in (files sort by class)
            model.init_from_data(self.preprocess(self.train_x[torch.arange(0, len(self.train_x), every)[:5000]]))
        return model

    def num_train(self) -> int:
        return len(self.train_y)

    def plan_epoch(self, ctx: Context, epoch: int, index_batches: list[torch.Tensor]) -> None:
        self.train_x.plan(index_batches)

    def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
        idx = indices.to(ctx.device)
        flip = None
        if self.aug.alternate_flip:  # airbench: each image flipped in every other epoch, from a seeded start
            flip = self.first_flip[idx] ^ bool(epoch % 2 == 0)
        x = self.preprocess(self.train_x.batch(indices), self.aug, gen, global_size, offset, flip)
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
        chunks = torch.arange(len(self.val_y)).split(classifier.batch_size)
        feats = torch.cat([classifier.features(x) for _, x in self.val_x.iterate(chunks)])
        checkpoint.save_snapshot(ctx.run.snapshots / f"features_epoch_{epoch:03d}.pt",
                                 {"task": self.name, "epoch": epoch,
                                  "features": feats.bfloat16(),  # half the size; float16 could overflow
                                  "labels": self.val_y.cpu(), "classes": self.classes})

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        if not self.cfg["snapshot"]["figures"]:
            return
        fig_dir = ctx.run.figures
        if rows:
            figures.training_curves(rows, fig_dir / "training_curves.png")
        if getattr(self, "last_confusion", None) is not None:
            figures.confusion_matrix(self.last_confusion, self.classes, fig_dir / "confusion_matrix.png")
            per_class = self.last_confusion.diagonal() / np.maximum(self.last_confusion.sum(1), 1)
            figures.per_class_bars(per_class, self.classes, "per-class validation accuracy",
                                   fig_dir / "per_class_accuracy.png")
        snaps = sorted(ctx.run.snapshots.glob("features_epoch_*.pt"))
        if snaps and len(self.val_y) < figures.MIN_EMBED_POINTS:
            log.warning("%d validation image(s): too few for the PCA / t-SNE figures (at least %d)",
                        len(self.val_y), figures.MIN_EMBED_POINTS)
            return
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
        return {**super().data_identity(), "classes": self.classes, **self.data.identity()}


TASK = ClassifyTask
