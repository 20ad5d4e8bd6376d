"""The baseline: training written the way the report's code trains - a per-image PIL dataset with
torchvision v1 transforms, a DataLoader, fp32, contiguous tensors, one optimizer step per batch. Same
model, optimizer, batch size and data as the dlcv run it is compared with (both read one resolved dlcv
config); only the data path and the numerics defaults differ."""
from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from dlcv.data import layouts
from dlcv.data.masks import IGNORE, read_mask
from dlcv.engine.optim import build_optimizer, trainable_parameters
from dlcv.models import create_model
from dlcv.models.byol import BYOL, target_momentum


def _to_input(cfg):
    """ToTensor + Normalize: the report's per-image conversion to the model's input."""
    return T.Compose([T.ToTensor(), T.Normalize(cfg["data"]["mean"], cfg["data"]["std"])])


class PerItem(Dataset):
    """`load(items[i])`: all the per-image work of the report's datasets happens in __getitem__."""

    def __init__(self, items, load):
        self.items, self.load = items, load

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.load(self.items[i])


# the loaders are module-level functions (bound with functools.partial) so DataLoader workers can pickle them
def labelled_image(transform, item):
    file, target = item
    return transform(Image.open(file).convert("RGB")), target


def two_views(view1, view2, file):
    image = Image.open(file).convert("RGB")
    return view1(image), view2(image)


def tile(transform, flip: bool, rotate90: bool, item):
    """(image, mask); random h/v flips and 90-degree rotations applied to both with numpy."""
    _, sat, mask_file = item
    image = np.asarray(Image.open(sat).convert("RGB"))
    mask, _ = read_mask(mask_file, IGNORE)
    if flip and torch.rand(()) < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip and torch.rand(()) < 0.5:
        image, mask = image[::-1], mask[::-1]
    if rotate90:
        k = int(torch.randint(4, ()))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    return transform(image.copy()), torch.from_numpy(mask.astype(np.int64))


def byol_view(cfg, view: int):
    """The BYOL paper's view pipeline with v1 transforms, at the dlcv run's view size and probabilities."""
    v, size = cfg["views"], cfg["data"]["input_size"] or cfg["data"]["image_size"]
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(v["crop_scale"]), ratio=tuple(v["crop_ratio"])),
        T.RandomHorizontalFlip(v["flip"]),
        T.RandomApply([T.ColorJitter(v["brightness"], v["contrast"], v["saturation"], v["hue"])], p=v["jitter"]),
        T.RandomGrayscale(v["grayscale"]),
        T.RandomApply([T.GaussianBlur(kernel, tuple(v["blur_sigma"]))], p=v["blur"][view]),
        T.RandomSolarize(128, p=v["solarize"][view]),
        _to_input(cfg)])


def model_for(case: str, cfg: dict, num_classes: int) -> torch.nn.Module:
    m = cfg["model"]
    if case == "byol":
        b = cfg["byol"]
        return BYOL(create_model(m["name"], num_classes=1000, weights=None, **m["options"]),
                    b["projector_hidden"], b["projector_dim"])
    return create_model(m["name"], num_classes=num_classes, weights=None, **m["options"])


def build(case: str, cfg: dict, device: torch.device):
    """(model, dataset, loss(model, batch), after_step(step)) for one benchmark case."""
    d, seed = cfg["data"], cfg["train"]["seed"]
    torch.manual_seed(seed)
    if case == "p1":  # the files dlcv reads (data/layouts.py), each decoded per step
        data = layouts.classification(d, seed)
        dataset = PerItem(list(zip(data.train.files, data.train.targets)), partial(labelled_image, _to_input(cfg)))
        model = model_for(case, cfg, len(data.classes)).to(device)
        return model, dataset, lambda net, b: F.cross_entropy(net(b[0]), b[1]), None
    if case == "byol":
        files, _ = layouts.unlabeled(d, seed)
        dataset = PerItem(files, partial(two_views, byol_view(cfg, 0), byol_view(cfg, 1)))
        model, b = model_for(case, cfg, 1000).to(device), cfg["byol"]

        def after_step(step):
            model.update_target(target_momentum(step, cfg["train"]["max_steps"], b["base_momentum"],
                                                b["final_momentum"]))
        return model, dataset, lambda net, views: net(*views), after_step
    if case == "seg":
        train = layouts.segmentation(d, seed).train
        pairs = list(zip(train.ids, train.files, train.masks))
        a = cfg["augment"]
        dataset = PerItem(pairs, partial(tile, _to_input(cfg), a["flip"], a["rotate90"]))
        model = model_for(case, cfg, 7).to(device)
        return model, dataset, lambda net, b: F.cross_entropy(net(b[0])["out"], b[1], ignore_index=IGNORE), None
    raise ValueError(case)


def _to(batch, device):
    return [x.to(device, non_blocking=True) for x in batch]


def train(case: str, cfg: dict, device: torch.device, workers: int, sync) -> dict:
    """Runs cfg's train.max_steps steps; returns per-step (seconds, data-wait seconds, loss)."""
    model, dataset, loss_fn, after_step = build(case, cfg, device)
    optimizer = build_optimizer(trainable_parameters(model), cfg)
    loader = DataLoader(dataset, batch_size=cfg["train"]["batch_size"], shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model.train()
    steps, data_s, losses = [], [], []
    it = iter(loader)
    for step in range(1, cfg["train"]["max_steps"] + 1):
        tic = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = _to(batch, device)
        sync()
        data_s.append(time.perf_counter() - tic)
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)
        losses.append(loss.item())
        sync()
        steps.append(time.perf_counter() - tic)
    return model, {"step_s": steps, "data_s": data_s, "losses": losses}


@torch.no_grad()
def p1_val_accuracy(model, cfg: dict, device: torch.device) -> float:
    """Accuracy on the same seeded val subset the dlcv run scores (data.limit_val, train.seed)."""
    val = layouts.classification(cfg["data"], cfg["train"]["seed"]).val
    items = list(zip(val.files, val.targets))
    loader = DataLoader(PerItem(items, partial(labelled_image, _to_input(cfg))), batch_size=256)
    model.eval()
    correct = sum((model(x.to(device)).argmax(1).cpu() == y).sum().item() for x, y in loader)
    return correct / len(items)
