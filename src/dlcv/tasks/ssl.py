"""P2: BYOL pre-training as a thin task over the engine (the transfer settings A-E are a pipeline:
pipelines/transfer.py)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcv import config as config_mod
from dlcv.data import labels as labels_mod, layouts
from dlcv.data.preprocess import Preprocess
from dlcv.data.sources import Images, Source
from dlcv.data.views import ViewSpec, two_views
from dlcv.engine.task import Context
from dlcv.errors import DlcvError
from dlcv.metrics import knn_accuracy
from dlcv.models import create_model
from dlcv.models.byol import BACKBONES, BYOL, resnet_features, target_momentum
from dlcv.statedict import save_state_dict
from dlcv.task_registry import registered
from dlcv.tasks import ModelTask, source_of
from dlcv.viz import figures

log = logging.getLogger("dlcv")

ENTRY = registered(__name__)

DEFAULTS: dict[str, Any] = {
    "task": ENTRY.name,
    # every image under data.root / data.unlabeled_dir, searched recursively (data/layouts.py)
    "data": {"unlabeled_dir": ".", "image_size": 128, "input_size": None},
    "model": {"name": "resnet50"},
    # separate_views: each view through each network on its own (BatchNorm statistics per view, as the paper,
    # lightly and solo-learn), not both in one batch: the higher k-NN accuracy at lightly's CIFAR budget on P1
    # (docs/results-p2.md)
    "byol": {"projector_hidden": 4096, "projector_dim": 256, "base_momentum": 0.99, "final_momentum": 1.0,
             "separate_views": True},
    "views": config_mod.dataclass_defaults(ViewSpec),
    # k-NN monitor on a labelled set in any classification layout (weighted vote of the k nearest train
    # features, Wu et al. 2018); knn.train_dir=null turns it off, and best.pt then follows the lowest
    # training loss.
    "knn": {"train_dir": "office/train", "train_csv": "office/train.csv", "val_dir": "office/val",
            "val_csv": "office/val.csv", "k": 20, "temperature": 0.07},
    "embed_std_images": 512,
}
TYPES = {"data.input_size": int, "knn.train_dir": str, "knn.train_csv": str, "knn.val_dir": str, "knn.val_csv": str}


def choices() -> dict[str, tuple]:
    return {"model.name": BACKBONES, "views.jitter_order": ("random", "fixed"), "views.hue_space": ("hsv", "yiq")}


MAX_PROJECTOR = 16384  # BYOL's projector is 4096 -> 256; 10^6 would be 8 GB of weights per layer


def _pair(ok):
    return lambda v: config_mod.numbers(v, 2) and all(ok(x) for x in v)


RANGES = {
    "data.image_size": config_mod.IMAGE_SIDE, "data.input_size": config_mod.IMAGE_SIDE_OR_NULL,
    "byol.projector_hidden": (config_mod.whole(1, MAX_PROJECTOR), f"a whole number in 1..{MAX_PROJECTOR}"),
    "byol.projector_dim": (config_mod.whole(1, MAX_PROJECTOR), f"a whole number in 1..{MAX_PROJECTOR}"),
    "byol.base_momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "byol.final_momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "views.crop_scale": config_mod.FRACTION_RANGE,
    "views.crop_ratio": config_mod.POSITIVE_RANGE,
    "views.flip": config_mod.PROBABILITY, "views.jitter": config_mod.PROBABILITY,
    "views.grayscale": config_mod.PROBABILITY,
    "views.brightness": config_mod.NON_NEGATIVE_WEIGHT, "views.contrast": config_mod.NON_NEGATIVE_WEIGHT,
    "views.saturation": config_mod.NON_NEGATIVE_WEIGHT,
    "views.hue": (lambda v: 0 <= v <= 0.5, "a number in [0, 0.5] (a fraction of a full turn, as ColorJitter)"),
    "views.blur": (_pair(lambda p: 0 <= p <= 1), "[p1, p2]: a probability per view, each in [0, 1]"),
    "views.blur_sigma": config_mod.POSITIVE_RANGE,
    "views.solarize": (_pair(lambda p: 0 <= p <= 1), "[p1, p2]: a probability per view, each in [0, 1]"),
    "knn.k": (config_mod.whole(1), "a whole number >= 1 (neighbours that vote)"),
    "knn.temperature": (lambda v: v > 0, "a number > 0"),
    "embed_std_images": (config_mod.whole(2), "a whole number >= 2 (a spread needs two images)"),
}

SCHEMA = config_mod.Schema(DEFAULTS, choices, TYPES, RANGES)


class SSLTask(ModelTask):
    name = ENTRY.name

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.use_knn = cfg["knn"]["train_dir"] is not None
        self.monitor, self.monitor_mode = ("knn_acc", "max") if self.use_knn else ("train_loss", "min")

    def setup(self, ctx: Context) -> None:
        if self.cfg["train"]["ema_decay"] is not None:
            raise DlcvError("train.ema_decay: BYOL already keeps a moving average of its weights (the target "
                            "network, byol.base_momentum); set train.ema_decay for classify or segment runs")
        d, device = self.cfg["data"], ctx.device
        files, _ = layouts.unlabeled(d, self.cfg["train"]["seed"])
        self.images = source_of(d, Images(files, d["image_size"]), device, f"images under {d['unlabeled_dir']}")
        self.input_size = d["input_size"] or d["image_size"]
        self.preprocess = Preprocess({k: d[k] for k in ("input_size", "mean", "std")}, device)
        self.views = ViewSpec.from_config(self.cfg["views"])
        if self.use_knn:
            kn, root = self.cfg["knn"], layouts.data_root(d)
            splits = {split: layouts.labelled(root, kn[f"{split}_dir"], kn[f"{split}_csv"], f"knn.{split}_dir")
                      for split in ("train", "val")}
            self.knn_classes = splits["train"].classes()
            self.knn_train, self.knn_val = (
                (source_of(d, Images(split.files, d["image_size"]), device, f"k-NN {name} set"),
                 torch.tensor(labels_mod.encode(split.labels, self.knn_classes, f"k-NN {name} set",
                                                unknown_as=-1 if name == "val" else None), device=device))
                for name, split in splits.items())
        log.info("ssl: %d unlabeled images at %d px (views %d px)%s", len(files), d["image_size"], self.input_size,
                 f"; k-NN monitor on {len(self.knn_train[1])}/{len(self.knn_val[1])} labelled images"
                 if self.use_knn else "")

    def build_model(self, ctx: Context) -> nn.Module:
        m, b = self.cfg["model"], self.cfg["byol"]
        backbone = create_model(m["name"], num_classes=1000, weights=m["weights"], **m["options"])
        return BYOL(backbone, b["projector_hidden"], b["projector_dim"], b["separate_views"])

    def num_train(self) -> int:
        return len(self.images)

    def _prepare(self, ctx: Context, x_uint8: torch.Tensor) -> torch.Tensor:
        return ctx.images(self.preprocess(x_uint8))

    def plan_epoch(self, ctx: Context, epoch: int, index_batches: list[torch.Tensor]) -> None:
        self.images.plan(index_batches)

    def train_batch(self, ctx, indices, offset, gen, global_size, epoch):
        x = self.images.batch(indices).float().div_(255)
        views = two_views(x, self.views, self.input_size, gen, global_size, offset)
        return tuple(ctx.images(self.preprocess.normalize(v)) for v in views)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return model(*batch)

    def after_step(self, ctx: Context, step: int) -> None:
        b = self.cfg["byol"]
        ctx.module.update_target(target_momentum(step, ctx.total_steps, b["base_momentum"], b["final_momentum"]))

    def _features(self, ctx: Context, images: Source) -> torch.Tensor:
        net = ctx.eval_module.backbone
        chunks = torch.arange(len(images)).split(self.cfg["train"]["eval_batch_size"])
        return torch.cat([resnet_features(net, self._prepare(ctx, x)).float() for _, x in images.iterate(chunks)])

    def evaluate(self, ctx: Context, model: nn.Module) -> dict[str, Any]:
        """Every rank evaluates the same fixed images (small sets), so no reduction is needed.

        embed_std: per-dimension std of the L2-normalised online projections of un-augmented images,
        times sqrt(dim): about 1 for well-spread embeddings, 0 when BYOL has collapsed to a constant."""
        byol = ctx.eval_module  # for its parts (embed, backbone); train.ema_decay is refused, so the trained weights
        sample = torch.arange(min(len(self.images), self.cfg["embed_std_images"]))
        with ctx.numerics.autocast(ctx.device):
            z = torch.cat([F.normalize(byol.embed(self._prepare(ctx, x)).float(), dim=1)
                           for _, x in self.images.iterate(sample.split(self.cfg["train"]["eval_batch_size"]))])
            metrics = {"embed_std": (z.std(0).mean() * math.sqrt(z.shape[1])).item()}
            if self.use_knn:
                kn = self.cfg["knn"]
                metrics["knn_acc"] = knn_accuracy(self._features(ctx, self.knn_train[0]), self.knn_train[1],
                                                  self._features(ctx, self.knn_val[0]), self.knn_val[1], kn["k"],
                                                  kn["temperature"], len(self.knn_classes))
        return metrics

    def finish(self, ctx: Context, rows: list[dict[str, Any]]) -> None:
        """Curves; the online backbone as a plain torchvision state_dict (any epoch's checkpoint exports with
        `dlcv ssl export`)."""
        if rows and self.cfg["snapshot"]["figures"]:
            figures.training_curves(rows, ctx.run.figures / "training_curves.png")
        save_state_dict(ctx.eval_module.backbone.state_dict(), ctx.run.path / "backbone.pt")
        log.info("backbone (torchvision %s state_dict) written to %s", self.cfg["model"]["name"],
                 ctx.run.path / "backbone.pt")

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"backbone_arch": self.cfg["model"]["name"]}

    def data_identity(self) -> dict[str, Any]:
        return {**super().data_identity(), "layout": "folder", "problem": layouts.PROBLEMS[(ENTRY.name, "folder")]}


TASK = SSLTask
