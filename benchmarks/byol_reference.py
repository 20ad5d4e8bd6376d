"""BYOL A/B: dlcv's `ssl pretrain` against a reference BYOL assembled from lightly's published building
blocks - same backbone, image size, data, optimizer, schedule, batch, number of steps and seed - printing
per epoch the training loss, embed_std and k-NN accuracy of both for every seed, beside a random
network's k-NN accuracy; JSON on stdout (and --out). `--supervised-epochs N` adds the same backbone trained
with the k-NN bank's labels, scored by the same monitor: the rise the monitor can show at that image size.

    .venv/bin/pip install -e '.[bench]'   # lightly: for this benchmark only, never a runtime dependency
    .venv/bin/python benchmarks/byol_reference.py --data ../shared/data/hw1_data/p2_data --seeds 0 1 \\
        --set train.epochs=10 --out benchmarks/results/byol_reference.json

Both sides read ONE resolved ssl config: the `p2_byol` recipe, the CPU budget below, then --set. dlcv runs
it as `dlcv ssl pretrain` in a subprocess. The reference takes the same numbers (lr, weight decay, warm-up
+ cosine per step, batch, epochs, projector sizes, target momentum base -> final per step) and builds the
rest from lightly: BYOLProjectionHead / BYOLPredictionHead, NegativeCosineSimilarity (put on the paper's
scale: 4 + 4 x its mean over both directions = dlcv's (2 - 2 cos) summed over the two directions, so one
lr is one step size), update_momentum, cosine_schedule, and BYOLView1/2Transform on PIL images through a
DataLoader, each view through each network on its own. Both start from the same decoded images
(data.image_size px; views and k-NN at data.input_size when set), the same backbone builder and seed, and the
same k-NN monitor and embed_std definition (dlcv's functions), in the precision dlcv's `auto` picks for the
backbone on this machine.
`--independent` takes dlcv's model and optimizer/schedule builders out of the reference's training too
(torchvision's ResNet, torch's SGD, lightly's warm-up + cosine), so that what the two sides share is only
the data, the monitor and the numbers. `--views dlcv` trains the reference on dlcv's views instead of
lightly's, so that the view pipeline is the only change against the plain reference.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import report_json  # benchmarks/report_json.py: machine + JSON output

# A budget that fits a 2-core CPU: ResNet-18 at 64 px with a narrow projector (the A/B's first rows,
# docs/results-p2.md).
CPU_BUDGET = ["model.name=resnet18", "data.image_size=64", "byol.projector_hidden=1024", "byol.projector_dim=128",
              "train.batch_size=128", "train.eval_batch_size=256", "optim.lr=0.1", "sched.warmup_epochs=1",
              "train.epochs=8", "train.precision=auto", "train.channels_last=auto", "train.sync_batchnorm=false"]


def resolve(data: str, sets: list[str]) -> dict:
    from dlcv import config
    from dlcv.tasks import fill_model_defaults, ssl
    recipe = config.load_yaml(config.find_recipe("p2_byol"))
    return fill_model_defaults(ssl.SCHEMA.resolve(config.with_root(recipe, data), [*CPU_BUDGET, *sets]))


def run_ours(data: str, sets: list[str], seed: int, out: Path) -> list[dict]:
    from dlcv import config
    command = [sys.executable, "-m", "dlcv", "ssl", "pretrain", "-c", "p2_byol", "--out", str(out),
               *config.set_args([config.set_item("data.root", str(data)), *CPU_BUDGET, *sets, f"train.seed={seed}"])]
    # its log passes through as it runs (a stopped benchmark keeps the epochs done); the last line names a failure
    last = "?"
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", file=sys.stderr, flush=True)
            last = line.strip() or last
    if proc.returncode != 0:
        raise SystemExit(f"dlcv ssl pretrain failed: {last}")
    from dlcv.engine.run import read_metrics
    return [{"epoch": r["epoch"], "loss": r["train_loss"], "embed_std": r["embed_std"], "knn_acc": r["knn_acc"],
             "seconds": r["seconds"]} for r in read_metrics(out / "metrics.csv")]


class Monitor:
    """dlcv's k-NN accuracy and embed_std, on the images the ssl task uses for them."""

    def __init__(self, cfg: dict, device: torch.device):
        from dlcv.data import labels as labels_mod, layouts
        from dlcv.data.images import list_images, load_images
        from dlcv.data.preprocess import Preprocess
        d, kn = cfg["data"], cfg["knn"]
        root = Path(d["root"])
        self.input_size = d["input_size"] or d["image_size"]  # the views' and the k-NN's side, as in ssl
        self.preprocess = Preprocess({k: d[k] for k in ("input_size", "mean", "std")}, torch.device("cpu"))
        self.unlabeled = load_images(list_images(root / d["unlabeled_dir"]), d["image_size"], d["cache_dir"])
        splits = {s: layouts.labelled(root, kn[f"{s}_dir"], kn[f"{s}_csv"], f"knn.{s}_dir") for s in ("train", "val")}
        self.classes = splits["train"].classes()
        self.sets = {s: (load_images(split.files, d["image_size"], d["cache_dir"]),
                         torch.tensor(labels_mod.encode(split.labels, self.classes, s,
                                                        unknown_as=-1 if s == "val" else None)))
                     for s, split in splits.items()}
        self.k, self.temperature, self.embed_images = kn["k"], kn["temperature"], cfg["embed_std_images"]
        self.batch = cfg["train"]["eval_batch_size"]

    @torch.no_grad()
    def __call__(self, backbone: nn.Module, projector: nn.Module, autocast) -> dict:
        from dlcv.metrics import knn_accuracy
        backbone.eval(), projector.eval()
        with autocast():
            feats = {s: torch.cat([backbone(self.preprocess(c)).float() for c in x.split(self.batch)])
                     for s, (x, _) in self.sets.items()}
            z = torch.cat([F.normalize(projector(backbone(self.preprocess(c))).float(), dim=1)
                           for c in self.unlabeled[:self.embed_images].split(self.batch)])
        backbone.train(), projector.train()
        return {"embed_std": (z.std(0).mean() * math.sqrt(z.shape[1])).item(),
                "knn_acc": knn_accuracy(feats["train"], self.sets["train"][1], feats["val"], self.sets["val"][1],
                                        self.k, self.temperature, len(self.classes))}


def lightly_view_options(views: dict, view: int) -> dict:
    """dlcv's view settings (`views.*`, per-view pairs indexed by `view`) as lightly's BYOLView arguments, so
    that a --set on the views reaches both sides. lightly's crops always use an aspect ratio of 3/4-4/3 and a
    largest scale of 1, so dlcv's must too."""
    crop_limits = torch.tensor([*views["crop_ratio"], views["crop_scale"][1]])
    if not torch.allclose(crop_limits, torch.tensor([3 / 4, 4 / 3, 1])):
        raise SystemExit(f"views.crop_ratio={views['crop_ratio']}, views.crop_scale={views['crop_scale']}: lightly's "
                         "views only crop at aspect ratios 3/4-4/3 and scales up to 1")
    return {"min_scale": views["crop_scale"][0], "hf_prob": views["flip"], "cj_prob": views["jitter"],
            "cj_bright": views["brightness"], "cj_contrast": views["contrast"], "cj_sat": views["saturation"],
            "cj_hue": views["hue"], "random_gray_scale": views["grayscale"], "gaussian_blur": views["blur"][view],
            "sigmas": tuple(views["blur_sigma"]), "solarization_prob": views["solarize"][view]}


def cpu_autocast(cfg: dict):
    """A context factory for the precision dlcv's `auto` picks for the backbone on this CPU."""
    from dlcv.engine.precision import PRECISIONS, resolve_precision
    from dlcv.models import model_spec
    dtype = PRECISIONS[resolve_precision(cfg["train"]["precision"], torch.device("cpu"),
                                         model_spec(cfg["model"]["name"]).cpu_bf16)]
    return lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def torchvision_backbone(cfg: dict) -> nn.Module:
    """--independent: the backbone straight from torchvision (the CIFAR stem set by hand as lightly's and
    solo-learn's CIFAR ResNets have it), without dlcv's model builder."""
    import torchvision
    name, options = cfg["model"]["name"], cfg["model"]["options"]
    net = getattr(torchvision.models, name.removesuffix("_cifar"))()
    if name.endswith("_cifar"):
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if not options.get("keep_maxpool", False):
            net.maxpool = nn.Identity()
    return net


def torch_optimizer(params: list, cfg: dict, steps_per_epoch: int):
    """--independent: torch's SGD over every parameter and lightly's linear warm-up + cosine per step (down to
    lightly's default 0.001x where dlcv's ends at 0), without dlcv's optimizer/schedule builders."""
    from lightly.utils.scheduler import CosineWarmupScheduler
    o, t = cfg["optim"], cfg["train"]
    if o["name"] != "sgd" or o["lr_mult"] or not o["decay_norm_and_bias"] or cfg["sched"]["name"] != "cosine":
        raise SystemExit("--independent builds plain SGD with weight decay on every parameter and a cosine schedule")
    optimizer = torch.optim.SGD([p for _, p in params], lr=o["lr"], momentum=o["momentum"],
                                nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    warmup = round(cfg["sched"]["warmup_epochs"] * steps_per_epoch)
    return optimizer, CosineWarmupScheduler(optimizer, warmup, t["epochs"] * steps_per_epoch, end_value=0.001)


def lightly_views(cfg: dict, monitor: Monitor, seed: int) -> torch.utils.data.DataLoader:
    """The reference's views: lightly's BYOLView1/2Transform on PIL images through a shuffling DataLoader."""
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from PIL import Image
    d = cfg["data"]
    normalize = {"mean": list(d["mean"]), "std": list(d["std"])}
    transform = BYOLTransform(*(view(input_size=monitor.input_size, normalize=normalize,
                                     **lightly_view_options(cfg["views"], i))
                                for i, view in enumerate((BYOLView1Transform, BYOLView2Transform))))
    images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in monitor.unlabeled]

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i])

    return torch.utils.data.DataLoader(Views(), batch_size=cfg["train"]["batch_size"], shuffle=True, drop_last=True,
                                       num_workers=1, persistent_workers=True,
                                       generator=torch.Generator().manual_seed(seed))


class DlcvViews:
    """`--views dlcv`: batches of dlcv's own views (`dlcv.data.views.two_views`, what `ssl pretrain` trains
    on) of the same images in a seeded shuffled order, full batches only, in place of lightly's: the reference
    trained on them isolates the view pipeline (issue 14, section 2)."""

    def __init__(self, cfg: dict, monitor: Monitor, seed: int):
        from dlcv.data.views import ViewSpec
        self.spec, self.monitor = ViewSpec.from_config(cfg["views"]), monitor
        self.batch = cfg["train"]["batch_size"]
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.monitor.unlabeled) // self.batch

    def __iter__(self):
        from dlcv.data.views import two_views
        images, size, normalize = self.monitor.unlabeled, self.monitor.input_size, self.monitor.preprocess.normalize
        order = torch.randperm(len(images), generator=self.gen)
        for i in range(len(self)):
            x = images[order[i * self.batch:(i + 1) * self.batch]].float().div_(255)
            yield tuple(normalize(v) for v in two_views(x, self.spec, size, self.gen, self.batch, 0))


def run_reference(cfg: dict, seed: int, monitor: Monitor, independent: bool = False,
                  views: str = "lightly") -> tuple[list[dict], float]:
    """lightly's BYOL (its docs' example loop) under dlcv's optimizer and schedule, or with `independent`
    under torchvision's backbone and torch's SGD + lightly's schedule (no dlcv code in training); `views`
    "dlcv" trains it on dlcv's views instead of lightly's. Returns the rows per epoch and the random
    network's k-NN accuracy (before the first step)."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from dlcv.engine.optim import build_optimizer, build_scheduler
    from dlcv.models import create_model

    m, b, t = cfg["model"], cfg["byol"], cfg["train"]
    autocast = cpu_autocast(cfg)
    torch.manual_seed(seed)
    backbone = (torchvision_backbone(cfg) if independent
                else create_model(m["name"], num_classes=1000, weights=None, **m["options"]))
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()
    projector = BYOLProjectionHead(feature_dim, b["projector_hidden"], b["projector_dim"])
    predictor = BYOLPredictionHead(b["projector_dim"], b["projector_hidden"], b["projector_dim"])
    backbone_target, projector_target = copy.deepcopy(backbone), copy.deepcopy(projector)
    deactivate_requires_grad(backbone_target), deactivate_requires_grad(projector_target)
    random_knn = monitor(backbone, projector, autocast)["knn_acc"]
    print(json.dumps({"reference": seed, "random network knn_acc": random_knn}), file=sys.stderr, flush=True)

    loader = DlcvViews(cfg, monitor, seed) if views == "dlcv" else lightly_views(cfg, monitor, seed)
    params = [(f"{part}.{name}", p) for part, module in
              {"backbone": backbone, "projector": projector, "predictor": predictor}.items()
              for name, p in module.named_parameters()]
    if independent:
        optimizer, scheduler = torch_optimizer(params, cfg, len(loader))
    else:
        optimizer = build_optimizer(params, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(loader))
    criterion = NegativeCosineSimilarity()
    total, step, rows = len(loader) * t["epochs"], 0, []
    for epoch in range(1, t["epochs"] + 1):
        tic, loss_sum = time.time(), 0.0
        for x0, x1 in loader:
            momentum = cosine_schedule(step, total, b["base_momentum"], b["final_momentum"])
            update_momentum(backbone, backbone_target, m=momentum)
            update_momentum(projector, projector_target, m=momentum)
            with autocast():
                p0, p1 = predictor(projector(backbone(x0))), predictor(projector(backbone(x1)))
                with torch.no_grad():
                    z0, z1 = projector_target(backbone_target(x0)), projector_target(backbone_target(x1))
                loss = 4 + 4 * 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            loss_sum += loss.item()
        seconds = time.time() - tic
        rows.append({"epoch": epoch, "loss": loss_sum / len(loader), **monitor(backbone, projector, autocast),
                     "seconds": round(seconds, 1)})
        print(json.dumps({"reference": seed, **rows[-1]}), file=sys.stderr, flush=True)
    return rows, random_knn


def run_supervised(cfg: dict, seed: int, monitor: Monitor, epochs: int) -> list[dict]:
    """What the k-NN monitor can show: the same backbone trained with labels (cross-entropy on the monitor's
    bank images and labels, horizontal flips, dlcv's optimizer and schedule over `epochs`), scored by the same
    monitor after every epoch. Its queries are never trained on."""
    from dlcv.engine.optim import build_optimizer, build_scheduler
    from dlcv.models import create_model

    m, t = cfg["model"], cfg["train"]
    autocast = cpu_autocast(cfg)
    torch.manual_seed(seed)
    images, labels = monitor.sets["train"]
    net = create_model(m["name"], num_classes=len(monitor.classes), weights=None, **m["options"])
    classifier, net.fc = net.fc, nn.Identity()  # the monitor reads the pooled features
    model = nn.Sequential(net, classifier)
    batch = t["batch_size"]
    steps = len(images) // batch
    optimizer = build_optimizer(model.named_parameters(), cfg)
    scheduler = build_scheduler(optimizer, {**cfg, "train": {**t, "epochs": epochs}}, steps)
    generator, rows = torch.Generator().manual_seed(seed), []
    for epoch in range(1, epochs + 1):
        tic, loss_sum = time.time(), 0.0
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps):
            pick = order[i * batch:(i + 1) * batch]
            x = images[pick]
            flip = torch.rand(len(pick), 1, 1, 1, generator=generator) < 0.5
            x = monitor.preprocess(torch.where(flip, x.flip(3), x))
            with autocast():
                loss = F.cross_entropy(model(x).float(), labels[pick])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.item()
        knn = monitor(net, nn.Identity(), autocast)["knn_acc"]
        rows.append({"epoch": epoch, "loss": loss_sum / steps, "knn_acc": knn, "seconds": round(time.time() - tic, 1)})
        print(json.dumps({"supervised": seed, **rows[-1]}), file=sys.stderr, flush=True)
    return rows


def mini_knn_split(data: Path, tmp: Path, query_per_class: int = 10) -> list[str]:
    """--set values for a k-NN monitor on mini-ImageNet's own labels: the first `query_per_class` images of
    each class (file order) are the queries, the rest the bank. CSVs written to `tmp`."""
    from dlcv.data import labels as labels_mod
    names, labels = labels_mod.read_labelled_csv(data / "mini" / "train.csv")
    seen: dict[str, int] = {}
    rows = {"bank": [], "query": []}
    for name, label in zip(names, labels):
        seen[label] = seen.get(label, 0) + 1
        rows["query" if seen[label] <= query_per_class else "bank"].append(f"{name},{label}")
    for split, lines in rows.items():
        (tmp / f"{split}.csv").write_text("filename,label\n" + "\n".join(lines) + "\n")
    return ["knn.train_dir=mini/train", f"knn.train_csv={tmp / 'bank.csv'}", "knn.val_dir=mini/train",
            f"knn.val_csv={tmp / 'query.csv'}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True,
                   help="data.root: the p2_data folder, or another root the --set data./knn. folders name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for both implementations")
    p.add_argument("--only", choices=("dlcv", "reference", "supervised"), help="run one side only")
    p.add_argument("--supervised-epochs", type=int, default=0, metavar="N",
                   help="also train the backbone with labels for N epochs on the k-NN bank: the k-NN the "
                        "monitor can show at this size (with --only supervised: that alone)")
    p.add_argument("--knn", choices=("office", "mini"), default="office",
                   help="k-NN monitor: the office train/val sets (the recipe's) or, in the pre-training "
                        "domain, mini-ImageNet's labels: 10 images per class queried against the other 90")
    p.add_argument("--independent", action="store_true",
                   help="the reference without dlcv's model and optimizer/schedule builders: torchvision's "
                        "ResNet, torch's SGD, lightly's warm-up + cosine")
    p.add_argument("--views", choices=("lightly", "dlcv"), default="lightly",
                   help="the reference's views: lightly's BYOLTransform on PIL images, or dlcv's own (isolates "
                        "the view pipeline)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.only == "supervised" and not args.supervised_epochs:
        p.error("--only supervised needs --supervised-epochs N")
    with tempfile.TemporaryDirectory() as tmp:
        if args.knn == "mini":
            args.set = [*mini_knn_split(Path(args.data), Path(tmp)), *args.set]
        cfg = resolve(args.data, args.set)
        monitor = Monitor(cfg, torch.device("cpu"))
        report = {**report_json.machine(), "sets": [*CPU_BUDGET, *args.set], "runs": {}}
        for seed in args.seeds:
            if args.only in (None, "dlcv"):
                report["runs"][f"dlcv seed {seed}"] = run_ours(args.data, args.set, seed, Path(tmp) / f"ours{seed}")
                print(json.dumps({f"dlcv seed {seed}": report["runs"][f"dlcv seed {seed}"]}), file=sys.stderr, flush=True)
            if args.only in (None, "reference"):
                rows, random_knn = run_reference(cfg, seed, monitor, args.independent, args.views)
                tags = ", ".join([*(["independent"] if args.independent else []),
                                  *(["dlcv views"] if args.views == "dlcv" else [])])
                report["runs"][f"reference{f' ({tags})' if tags else ''} seed {seed}"] = rows
                report[f"random network knn_acc seed {seed}"] = random_knn
            if args.supervised_epochs and args.only in (None, "supervised"):
                report["runs"][f"supervised seed {seed}"] = run_supervised(cfg, seed, monitor, args.supervised_epochs)
    return report_json.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
