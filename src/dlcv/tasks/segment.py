"""P3 semantic segmentation as a thin task over the engine: satellite tiles and masks decoded once into
uint8 tensors on the device, joint image/mask augmentation on the device (per-sample flips, 90-degree rotations, crops),
and validation scored with the course's exact mIoU."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from dlcv import config as config_mod
from dlcv.data import augment
from dlcv.data.images import cached, check_fits_in_memory, read_rgb
from dlcv.data.masks import CLASS_NAMES, IGNORE, NUM_CLASSES, SCORED, UNKNOWN, pair_folder, read_mask
from dlcv.data.preprocess import Preprocess
from dlcv.engine import batches, checkpoint
from dlcv.engine.task import Context
from dlcv.errors import DlcvError
from dlcv.inference.segment import Segmenter
from dlcv.metrics import course_iou
from dlcv.models import create_model, list_models
from dlcv.task_registry import registered
from dlcv.tasks import ModelTask, validate_classes
from dlcv.viz import figures

log = logging.getLogger("dlcv")

ENTRY = registered(__name__)

# data.crop_size: the training input side (null: the tile's); each training tile is a random crop covering
# augment.scale of the tile's area (square), resized to crop_size: scale [1, 1] is a plain resize.
# data.infer_scale: validation and predict resize each tile by this factor for the model (the resolution
# it trained at, e.g. 0.5 for crop_size 256 of whole 512 px tiles) and its logits back to the tile's size.
DEFAULTS: dict[str, Any] = {
    "task": ENTRY.name,
    "data": {"root": None, "train_dir": "train", "val_dir": "validation", "crop_size": None, "infer_scale": 1.0,
             "mean": None, "std": None, "cache_dir": None, "limit_train": None, "limit_val": None},
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
TYPES = {"data.crop_size": int, "data.cache_dir": str, "data.limit_train": int, "data.limit_val": int}


def choices() -> dict[str, tuple]:
    return {"model.name": tuple(list_models("segment"))}


RANGES = {
    "data.crop_size": config_mod.IMAGE_SIDE_OR_NULL,
    "data.infer_scale": (lambda v: 0.05 <= v <= 4, "a factor in [0.05, 4] (a 512 px tile at 0.05 is 26 px)"),
    "data.limit_val": config_mod.COUNT_OR_NULL,
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


def _decode_split(pairs, red_as: int, what: str):
    """Images N x 3 x H x W and masks N x H x W (uint8); all tiles of a split must share one size."""
    first = read_rgb(pairs[0][1])
    n, (h, w) = len(pairs), first.shape[:2]
    check_fits_in_memory(n * 4 * h * w, f"{n} {what} tiles of {w}x{h} px (image and mask)",
                         f"set data.limit_{'train' if what == 'train' else 'val'}")
    images = np.empty((n, 3, h, w), np.uint8)
    masks = np.empty((n, h, w), np.uint8)
    red = 0
    for i, (_, sat, mask_file) in enumerate(pairs):
        img = first if i == 0 else read_rgb(sat)
        mask, n_red = read_mask(mask_file, red_as)
        if img.shape[:2] != (h, w):
            raise DlcvError(f"{sat}: {img.shape[1]}x{img.shape[0]}, but the {what} tiles are {w}x{h}")
        if mask.shape != img.shape[:2]:
            raise DlcvError(f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                            f"its image {sat.name} is {img.shape[1]}x{img.shape[0]}")
        images[i], masks[i] = img.transpose(2, 0, 1), mask
        red += n_red
    return {"images": torch.from_numpy(images), "masks": torch.from_numpy(masks), "red": torch.tensor(red)}


class SegmentTask(ModelTask):
    name = ENTRY.name
    monitor = "val_miou"

    def setup(self, ctx: Context) -> None:
        d, seed = self.cfg["data"], self.cfg["train"]["seed"]
        root, device = Path(d["root"]), ctx.device
        splits = {}
        for split, folder, limit, red_as in (("train", d["train_dir"], d["limit_train"], IGNORE),
                                             ("val", d["val_dir"], d["limit_val"], UNKNOWN)):
            pairs = pair_folder(root / folder)
            keep = batches.seeded_subset(len(pairs), limit, seed)
            if split == "val":  # a limited val set still holds the report's snapshot tiles
                snapshot_ids = set(self.cfg["snapshot"]["images"])
                keep = sorted(set(keep) | {i for i, (ident, _, _) in enumerate(pairs) if ident in snapshot_ids})
            pairs = [pairs[i] for i in keep]
            files = [p for _, sat, mask in pairs for p in (sat, mask)]
            data = cached(files, f"segment:{red_as}", lambda: _decode_split(pairs, red_as, split), d["cache_dir"])
            if data["red"]:
                treatment = "ignored by the loss" if split == "train" else f"scored as unknown ({UNKNOWN})"
                log.warning("%s: %d pure-red pixels (code 4, not a class of the course): %s",
                            root / folder, int(data["red"]), treatment)
            if split == "train":
                unlabelled = [ident for (ident, _, _), red in zip(pairs, (data["masks"] == IGNORE).flatten(1).all(1))
                              if red]
                if unlabelled:
                    log.warning("%s: %d training tile(s) pure red everywhere, e.g. %s: no pixel of them is "
                                "learned from", root / folder, len(unlabelled), unlabelled[0])
            splits[split] = (pairs, data["images"].to(device), data["masks"].to(device))
        (_, self.train_x, self.train_y), (self.val_pairs, self.val_x, self.val_y) = splits["train"], splits["val"]
        self.preprocess = Preprocess({"mean": d["mean"], "std": d["std"]}, device)
        a = self.cfg["augment"]
        self.geometry = {"flip": a["flip"], "rotate90": a["rotate90"], "scale": tuple(a["scale"]),
                         "balanced": a["balanced"]}
        self.crop_size = d["crop_size"] or self.train_x.shape[-1]
        self.augmenting = a["flip"] or a["rotate90"] or self.geometry["scale"] != (1.0, 1.0) \
            or self.crop_size != self.train_x.shape[-1]
        self.confusion = MulticlassConfusionMatrix(NUM_CLASSES).to(device)
        log.info("segment: %d train / %d val tiles of %dx%d px", len(self.train_x), len(self.val_x),
                 self.train_x.shape[-1], self.train_x.shape[-2])

    def build_model(self, ctx: Context) -> nn.Module:
        m = self.cfg["model"]
        return create_model(m["name"], num_classes=NUM_CLASSES, weights=m["weights"], **m["options"])

    def num_train(self) -> int:
        return len(self.train_x)

    def normalize(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        """uint8 tiles, or floats in [0, 1], -> the model's normalised input."""
        return ctx.images(self.preprocess(x) if x.dtype == torch.uint8 else self.preprocess.normalize(x))

    def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
        idx = indices.to(ctx.device)
        x, y = self.train_x[idx], self.train_y[idx]
        if self.augmenting:  # joint geometry on the device, per-sample parameters (data/augment.py)
            draw = augment.GlobalDraw(gen, global_size, offset, len(idx), x.device)
            x, y = augment.tile_geometry(x.float().div_(255), y, draw, self.crop_size, classes=SCORED,
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
        matrix, loss_sum = validate_classes(ctx, self.confusion, self._segmenter(ctx, model), self.val_x, self.val_y)
        ious, miou = course_iou(matrix)
        self.last_ious = ious
        return {"val_loss": loss_sum / matrix.sum(), "val_miou": miou,
                **{f"iou_{CLASS_NAMES[c]}": ious[c] for c in range(SCORED)},
                "pixel_acc": float(matrix.trace() / matrix.sum()),
                "per_class_iou": {CLASS_NAMES[c]: round(ious[c], 5) for c in range(SCORED)}}

    def _snapshot_indices(self) -> list[int]:
        ids = [ident for ident, _, _ in self.val_pairs]
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
        idx = torch.tensor(self._snapshot_indices(), device=ctx.device)
        pred = self._segmenter(ctx, model).logits(self.val_x[idx]).argmax(1).to(torch.uint8).cpu()
        checkpoint.save_snapshot(ctx.run.snapshots / f"masks_epoch_{epoch:03d}.pt",
                                 {"task": self.name, "epoch": epoch, "masks": pred,
                                  "ids": [self.val_pairs[i][0] for i in idx.tolist()]})

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        fig_dir = ctx.run.figures
        if rows:
            figures.training_curves([{k: v for k, v in r.items() if not k.startswith("iou_")} for r in rows],
                                    fig_dir / "training_curves.png")
        if getattr(self, "last_ious", None) is not None:
            figures.per_class_bars(self.last_ious, list(CLASS_NAMES[:SCORED]), "per-class validation IoU",
                                   fig_dir / "per_class_iou.png")
        snaps = [checkpoint.load_snapshot(p, self.name) for p in sorted(ctx.run.snapshots.glob("masks_epoch_*.pt"))]
        if snaps:
            idx = self._snapshot_indices()
            figures.mask_grid(self.val_x[idx].cpu().numpy(), self.val_y[idx].cpu().numpy(),
                              {s["epoch"]: s["masks"].numpy() for s in snaps}, snaps[0]["ids"],
                              fig_dir / "mask_grid.png")

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"preprocess": {"mean": self.cfg["data"]["mean"], "std": self.cfg["data"]["std"],
                               "tta": self.cfg["tta"], "infer_scale": self.cfg["data"]["infer_scale"]}}


TASK = SegmentTask
