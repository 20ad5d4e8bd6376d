"""Semantic segmentation (P3's satellite tiles, or image / mask pairs of the user's own classes) as a thin
task over the engine: tiles and masks as uint8 tensors held on the device or streamed from disk
(data/sources.py), joint image/mask augmentation on the device (per-sample flips, 90-degree rotations,
crops), and validation scored as the dataset's classes say (the course's exact mIoU for P3)."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from dlcv import config as config_mod
from dlcv.data import augment, layouts
from dlcv.data.images import open_image_header
from dlcv.data.masks import IGNORE, UNKNOWN
from dlcv.data.preprocess import Preprocess
from dlcv.data.sources import Tiles
from dlcv.engine import checkpoint
from dlcv.engine.task import Context
from dlcv.inference.segment import Segmenter
from dlcv.metrics import segmentation_iou
from dlcv.models import create_model, list_models
from dlcv.task_registry import registered
from dlcv.tasks import ModelTask, source_of, validate_classes
from dlcv.viz import figures

log = logging.getLogger("dlcv")

ENTRY = registered(__name__)

# data.crop_size: the training input side (null: the tile's); each training tile is a random crop covering
# augment.scale of the tile's area (square), resized to crop_size: scale [1, 1] is a plain resize.
# data.infer_scale: validation and predict resize each tile by this factor for the model (the resolution
# it trained at, e.g. 0.5 for crop_size 256 of whole 512 px tiles) and its logits back to the tile's size.
# data.image_size: every tile and mask resized to this side when read (null: as they are, all of one size);
# data.ignore_index: the value of pixels of no class in class-index masks (the pairs layout)
DEFAULTS: dict[str, Any] = {
    "task": ENTRY.name,
    "data": {**layouts.SPLIT_DEFAULTS, "crop_size": None, "infer_scale": 1.0, "image_size": None,
             "ignore_index": IGNORE},
    "model": {"name": "fcn32s_vgg16"},
    # balanced: the fraction of crops centred on a pixel of a class drawn uniformly among the tile's classes
    "augment": {"flip": False, "rotate90": False, "scale": [1.0, 1.0], "balanced": 0.0},
    # dice_weight / lovasz_weight: + that x (1 - soft Dice) / the Lovasz-softmax term to the cross-entropy
    "loss": {"aux_weight": 0.4, "label_smoothing": 0.0, "dice_weight": 0.0, "lovasz_weight": 0.0},
    # test-time augmentation in validation AND predict (saved in the checkpoint): see inference.segment's
    # tta_logits; scales: the tile is also seen resized by each factor (times data.infer_scale), tile_logits
    "tta": {"flip": False, "rotate90": False, "scales": [1.0]},
    "snapshot": {"images": ["0013", "0062", "0104"]},
}
TYPES = {"data.crop_size": int, "data.image_size": int, "data.ignore_index": int, **layouts.SPLIT_TYPES}


def choices() -> dict[str, tuple]:
    return {"model.name": tuple(list_models("segment")), **layouts.layout_choices(ENTRY.name)}


RANGES = {
    "data.crop_size": config_mod.IMAGE_SIDE_OR_NULL,
    "data.image_size": config_mod.IMAGE_SIDE_OR_NULL,
    "data.ignore_index": (lambda v: 0 <= v <= 255, "a pixel value in 0..255 (or null: none)"),
    "data.infer_scale": (lambda v: 0.05 <= v <= 4, "a factor in [0.05, 4] (a 512 px tile at 0.05 is 26 px)"),
    **layouts.SPLIT_RANGES,
    "loss.label_smoothing": config_mod.LABEL_SMOOTHING,
    "loss.dice_weight": config_mod.NON_NEGATIVE_WEIGHT,
    "loss.lovasz_weight": config_mod.NON_NEGATIVE_WEIGHT,
    "augment.balanced": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "augment.scale": config_mod.FRACTION_RANGE,
    "tta.scales": (lambda v: config_mod.numbers(v) and all(0 < x <= 4 for x in v), "a list of factors in (0, 4]"),
    "loss.aux_weight": config_mod.NON_NEGATIVE_WEIGHT,
    "snapshot.images": (lambda v: all(isinstance(i, str) and i for i in v),
                        "a list of validation tile ids, e.g. ['0013', '0062']"),
}

SCHEMA = config_mod.Schema(DEFAULTS, choices, TYPES, RANGES)


def labelled_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels (IGNORE left out), as torch's mean; 0 for a batch
    without any (crops of pure red), where torch's mean is 0/0 = nan. No host sync."""
    total = F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=label_smoothing, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice (softmax probabilities against one-hot labels, summed over the batch), averaged over
    the classes present in the batch's labels, IGNORE pixels left out: unlike cross-entropy it weighs a
    rare class (rangeland, water) as much as a common one. By hand because torchmetrics' Dice is a metric
    (no gradient) and segmentation_models_pytorch would be a dependency for ten lines."""
    valid = (target != IGNORE).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    present = onehot.sum(dims) > 0
    dice = 2 * (probs * onehot).sum(dims) / (probs.sum(dims) + onehot.sum(dims)).clamp_min(1e-6)
    return ((1 - dice) * present).sum() / present.sum().clamp_min(1)  # 0 where no pixel is labelled


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Lovasz-softmax (Berman et al. 2018, "classes present", whole batch): the convex surrogate of 1 - IoU
    of each class present in the labels, averaged, IGNORE pixels left out. It sorts every pixel's error per
    class; on every `stride`-th pixel in each direction (the decoders predict at stride 4 and upsample
    bilinearly, so little is lost) that sort is 16x smaller: ~5 ms instead of ~90 ms per class for a batch of
    16 crops of 256 px on 2 cores (measured). By hand: no library we depend on has it."""
    logits, target = logits[:, :, ::stride, ::stride], target[:, ::stride, ::stride]
    keep = (target != IGNORE).reshape(-1)
    probs = logits.float().softmax(1).permute(1, 0, 2, 3).reshape(logits.shape[1], -1)[:, keep]  # C x P
    labels = target.reshape(-1)[keep]
    onehot = F.one_hot(labels, logits.shape[1]).T.float()  # C x P
    present = onehot.sum(1) > 0
    if not present.any():
        return logits.sum() * 0.0
    fg, probs = onehot[present], probs[present]
    errors, order = (fg - probs).abs().sort(1, descending=True)
    fg_sorted = fg.gather(1, order)
    total = fg_sorted.sum(1, keepdim=True)
    jaccard = 1 - (total - fg_sorted.cumsum(1)) / (total + (1 - fg_sorted).cumsum(1))
    gradient = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)  # the extension's weights
    return (errors * gradient).sum(1).mean()


class SegmentTask(ModelTask):
    name = ENTRY.name
    monitor = "val_miou"

    def setup(self, ctx: Context) -> None:
        d, seed, device = self.cfg["data"], self.cfg["train"]["seed"], ctx.device
        self.data = layouts.segmentation(d, seed, tuple(self.cfg["snapshot"]["images"]))
        self.table, train, val = self.data.mask_classes, self.data.train, self.data.val
        # the course's pure red: ignored by the training loss, scored as unknown (its evaluator's reading)
        self.train_x = source_of(d, Tiles(train.files, train.masks, self.table, IGNORE, d["image_size"], "train"),
                                 device, f"training set {train.folder}")
        self.val_x = source_of(d, Tiles(val.files, val.masks, self.table, UNKNOWN, d["image_size"], "val"),
                               device, f"validation set {val.folder}")
        self._warn_of_unlabelled_pixels()
        self.preprocess = Preprocess({"mean": d["mean"], "std": d["std"]}, device)
        a = self.cfg["augment"]
        self.geometry = {"flip": a["flip"], "rotate90": a["rotate90"], "scale": tuple(a["scale"]),
                         "balanced": a["balanced"]}
        with open_image_header(train.files[0]) as first:
            self.tile_side = d["image_size"] or first.width
        self.crop_size = d["crop_size"] or self.tile_side
        self.augmenting = a["flip"] or a["rotate90"] or self.geometry["scale"] != (1.0, 1.0) \
            or self.crop_size != self.tile_side
        ignore = None if self.table.course else IGNORE  # the course's truth has no such pixel in validation
        self.confusion = MulticlassConfusionMatrix(len(self.table.names), ignore_index=ignore).to(device)
        log.info("segment: layout %s, %d classes, %d train / %d val tiles%s", self.data.layout, len(self.table.names),
                 len(train), len(val), " (held out of the training set)" if self.data.held_out else "")

    def _warn_of_unlabelled_pixels(self) -> None:
        """Pixels of no class (the course's pure red) of splits held in memory (their decoding counts them)."""
        for split, source in (("train", self.train_x), ("val", self.val_x)):
            ignored = getattr(source.decoder, "ignored", 0)
            folder = getattr(self.data, split).folder
            if ignored and self.table.course:
                treatment = "ignored by the loss" if split == "train" else f"scored as unknown ({UNKNOWN})"
                log.warning("%s: %d pure-red pixels (code 4, not a class of the course): %s", folder, ignored,
                            treatment)
            elif ignored:
                log.info("%s: %d pixels of no class, left out of the loss and the score", folder, ignored)
        if self.train_x.in_memory:
            masks = self.train_x.tensors[1]
            empty = (masks == IGNORE).flatten(1).all(1)
            unlabelled = [ident for ident, none in zip(self.data.train.ids, empty) if none]
            if unlabelled:
                what = "pure red everywhere" if self.table.course else "without a pixel of any class"
                log.warning("%s: %d training tile(s) %s, e.g. %s: no pixel of them is learned from",
                            self.data.train.folder, len(unlabelled), what, unlabelled[0])

    def build_model(self, ctx: Context) -> nn.Module:
        m = self.cfg["model"]
        return create_model(m["name"], num_classes=len(self.table.names), weights=m["weights"], **m["options"])

    def num_train(self) -> int:
        return len(self.train_x)

    def normalize(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        """uint8 tiles, or floats in [0, 1], -> the model's normalised input."""
        return ctx.images(self.preprocess(x) if x.dtype == torch.uint8 else self.preprocess.normalize(x))

    def plan_epoch(self, ctx: Context, epoch: int, index_batches: list[torch.Tensor]) -> None:
        self.train_x.plan(index_batches)

    def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
        x, y = self.train_x.batch(indices)
        if self.augmenting:  # joint geometry on the device, per-sample parameters (data/augment.py)
            draw = augment.GlobalDraw(gen, global_size, offset, len(indices), x.device)
            x, y = augment.tile_geometry(x.float().div_(255), y, draw, self.crop_size, classes=self.table.scored,
                                         **self.geometry)
        return self.normalize(ctx, x), y.long()

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        out = model(x)
        terms = self.cfg["loss"]
        smooth, dice, lovasz = terms["label_smoothing"], terms["dice_weight"], terms["lovasz_weight"]
        loss = labelled_cross_entropy(out["out"], y, smooth)
        if dice:
            loss = loss + dice * dice_loss(out["out"], y)
        if lovasz:
            loss = loss + lovasz * lovasz_softmax(out["out"], y)
        if out.get("aux") is not None:
            loss = loss + terms["aux_weight"] * labelled_cross_entropy(out["aux"], y, smooth)
        return loss

    def _segmenter(self, ctx: Context, model: nn.Module) -> Segmenter:
        """`model` as validation, snapshots and predict run it (what a checkpoint of the run records)."""
        return Segmenter(model, self.checkpoint_meta()["preprocess"], ctx.numerics,
                         self.cfg["train"]["eval_batch_size"], ctx.device)

    def evaluate(self, ctx: Context, model: nn.Module) -> dict[str, Any]:
        matrix, loss_sum = validate_classes(ctx, self.confusion, self._segmenter(ctx, model), self.val_x,
                                            ignore_index=IGNORE)
        ious, miou = segmentation_iou(matrix, self.table)
        self.last_ious = ious
        names = self.table.names[:self.table.scored]
        return {"val_loss": loss_sum / matrix.sum(), "val_miou": miou,
                **{f"iou_{name}": iou for name, iou in zip(names, ious)},
                "pixel_acc": float(matrix.trace() / matrix.sum()),
                "per_class_iou": {name: round(iou, 5) for name, iou in zip(names, ious)}}

    def _snapshot_indices(self) -> list[int]:
        ids = self.data.val.ids
        wanted = [ids.index(i) for i in self.cfg["snapshot"]["images"] if i in ids]
        if not wanted:
            log.warning("snapshot images %s not in the validation set; using its first three",
                        self.cfg["snapshot"]["images"])
            wanted = list(range(min(3, len(ids))))
        return wanted

    def snapshot(self, ctx: Context, model: nn.Module, epoch: int) -> None:
        """Predicted masks of the chosen val images at this epoch (as validation predicts them: with the
        test-time augmentation), for the mask grid figure."""
        if not ctx.is_main:
            return
        idx = torch.tensor(self._snapshot_indices())
        pred = self._segmenter(ctx, model).logits(self.val_x[idx][0]).argmax(1).to(torch.uint8).cpu()
        checkpoint.save_snapshot(ctx.run.snapshots / f"masks_epoch_{epoch:03d}.pt",
                                 {"task": self.name, "epoch": epoch, "masks": pred,
                                  "ids": [self.data.val.ids[i] for i in idx.tolist()]})

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        if not self.cfg["snapshot"]["figures"]:
            return
        fig_dir = ctx.run.figures
        if rows:
            figures.training_curves([{k: v for k, v in r.items() if not k.startswith("iou_")} for r in rows],
                                    fig_dir / "training_curves.png")
        if getattr(self, "last_ious", None) is not None:
            figures.per_class_bars(self.last_ious, list(self.table.names[:self.table.scored]),
                                   "per-class validation IoU", fig_dir / "per_class_iou.png")
        snaps = [checkpoint.load_snapshot(p, self.name) for p in sorted(ctx.run.snapshots.glob("masks_epoch_*.pt"))]
        if snaps:
            images, truths = self.val_x[torch.tensor(self._snapshot_indices())]
            figures.mask_grid(images.cpu().numpy(), truths.cpu().numpy(),
                              {s["epoch"]: s["masks"].numpy() for s in snaps}, snaps[0]["ids"],
                              fig_dir / "mask_grid.png", self.table.to_rgb, list(self.table.names))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": list(self.table.names), "masks": self.table.record(),
                "preprocess": {"mean": self.cfg["data"]["mean"], "std": self.cfg["data"]["std"],
                               "tta": self.cfg["tta"], "infer_scale": self.cfg["data"]["infer_scale"]}}

    def data_identity(self) -> dict[str, Any]:
        return {**super().data_identity(), "classes": list(self.table.names), **self.data.identity()}


TASK = SegmentTask
