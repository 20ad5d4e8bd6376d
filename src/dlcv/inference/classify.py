"""A classifier as validation, feature snapshots, predict (hw1_1.sh, hw1_2.sh), embed and export run it:
uint8 images -> the run's preprocessing -> its test-time views (mirror image, shifts), in its precision and
memory layout; and what a classify checkpoint holds besides the weights, checked."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcv.config import MAX_SIDE
from dlcv.data import augment
from dlcv.engine import checkpoint
from dlcv.engine.precision import Numerics
from dlcv.errors import DlcvError
from dlcv.inference import (MEAN, SIZE, STD, Exportable, checkpoint_batch_size, checkpoint_numerics,
                            class_list_problem, entries_problem, is_size)
from dlcv.inference.exported import has_views

TASK = "classify"
# what predict reads besides the weights and the config (engine.checkpoint: CHECKPOINT_KEYS)
REQUIRE = ("classes", "preprocess")


def _views_ok(v) -> bool:
    return v is None or isinstance(v, dict) and isinstance(v.get("flip", False), bool) \
        and isinstance(v.get("translate", 0), int) and not isinstance(v.get("translate", 0), bool) \
        and 0 <= v.get("translate", 0) < MAX_SIDE


PREPROCESS_CHECKS = {
    "image_size": SIZE,
    "input_size": (lambda v: v is None or is_size(v), f"null or a size in 1..{MAX_SIDE} px"),
    "mean": MEAN,
    "std": STD,
    "tta": (_views_ok, "null or a test-time augmentation mapping (flip, translate)"),
}


def checkpoint_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a classify checkpoint's class names or preprocessing, or None."""
    return class_list_problem(state["classes"]) or entries_problem(
        state["preprocess"], PREPROCESS_CHECKS, "preprocess", required=("image_size", "mean", "std"))


def read_checkpoint(path) -> dict[str, Any]:
    """A classify checkpoint, checked (engine.checkpoint.load); anything else is one clear error."""
    return checkpoint.load(path, TASK, REQUIRE, checkpoint_problem)


def tta_logits(model: nn.Module, x: torch.Tensor, tta: dict[str, Any] | None) -> torch.Tensor:
    """fp32 logits, averaged over test-time views as airbench does: the image and its mirror image
    (`flip`), and with `translate` t also both shifted by t pixels up-left and down-right (reflect
    padding), weighted 1/2 unshifted and 1/4 per shift. No tta: the plain logits."""
    def views_of(z):
        return [z, z.flip(-1)] if tta and tta["flip"] else [z]

    def mean_logits(z):
        outs = [model(v).float() for v in views_of(z)]
        return sum(outs) / len(outs)

    logits = mean_logits(x)
    t = tta["translate"] if tta else 0
    if t:
        h, w = x.shape[-2:]
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2 * t:, 2 * t:]]
        layout = augment.memory_format_of(x)
        logits = 0.5 * logits + 0.25 * sum(mean_logits(z.contiguous(memory_format=layout)) for z in shifted)
    return logits


@contextlib.contextmanager
def capture_head_input(model: nn.Module, head: str, to_cpu: bool = True):
    """Collects the input of the final layer (the feature vector) of every forward pass, fp32 (on the CPU
    with `to_cpu`)."""
    captured: list[torch.Tensor] = []

    def keep(_module, args):
        features = args[0].detach().float().flatten(1)
        captured.append(features.cpu() if to_cpu else features)

    handle = model.get_submodule(head).register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


class ClassifierGraph(nn.Module):
    """What predict computes, as one module: validation and predict run it, and `dlcv export` writes it out.
    Float RGB in [0, 1], N x 3 x S x S (S: the checkpoint's image_size, the side every image is decoded
    to) -> resized to the model's input side (data.input_size) -> normalised -> the test-time views
    (tta_logits) -> fp32 logits; with `with_features` also the final layer's input of the plain images."""

    def __init__(self, model: nn.Module, head: str, meta: dict[str, Any], with_features: bool = False):
        super().__init__()
        self.model, self.head, self.with_features = model, head, with_features
        self.input_size, self.tta = meta.get("input_size"), meta.get("tta")
        self.register_buffer("mean", torch.tensor(meta["mean"]), persistent=False)
        self.register_buffer("std", torch.tensor(meta["std"]), persistent=False)
        self.memory_format = torch.contiguous_format  # the layout the model runs in (Classifier sets it)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for the plain images."""
        x = augment.normalize(augment.resize(x, self.input_size), self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor):
        if not self.with_features:
            return tta_logits(self.model, self.inputs(x), self.tta)
        with capture_head_input(self.model, self.head, to_cpu=False) as captured:
            logits = tta_logits(self.model, self.inputs(x), self.tta)
        return logits, captured[0]  # the first forward pass is the plain view's


class Classifier:
    """`model` (in eval mode) with what its run validated with: `meta`, a classify checkpoint's
    "preprocess" (image sizes, mean / std, test-time views), its numerics and evaluation batch size."""

    def __init__(self, model: nn.Module, model_name: str, meta: dict[str, Any], numerics: Numerics,
                 batch_size: int, device: torch.device):
        self.model, self.meta, self.numerics, self.batch_size, self.device = model, meta, numerics, batch_size, device
        from dlcv.models import model_spec  # here: an exported model runs without dlcv's model code
        self.head = model_spec(model_name).head
        self.graph = ClassifierGraph(model, self.head, meta).to(device)
        self.graph.memory_format = numerics.memory_format

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], device: torch.device, precision: str = "auto",
                        batch_size: int | None = None, where: str = "checkpoint") -> Classifier:
        """The model of a classify checkpoint, on the device, as its run validated it (`precision`:
        auto, or another for this device, see engine.precision.for_predict)."""
        from dlcv.models import model_from_checkpoint
        numerics = checkpoint_numerics(state, device, precision, where)
        model = model_from_checkpoint(state, len(state["classes"])).to(device).eval()
        return cls(model.to(memory_format=numerics.memory_format), state["config"]["model"]["name"],
                   state["preprocess"], numerics, checkpoint_batch_size(state, batch_size), device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """fp32 logits of uint8 images N x 3 x H x W, averaged over the test-time views."""
        with torch.no_grad(), self.numerics.autocast(self.device):
            return self.graph(images.to(self.device).float().div_(255))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The final layer's input (the feature vector) for the plain images, whatever the test-time
        views: fp32 on the CPU."""
        with torch.no_grad(), self.numerics.autocast(self.device), \
                capture_head_input(self.model, self.head) as captured:
            self.model(self.graph.inputs(images.to(self.device).float().div_(255)))
        return torch.cat(captured)


def exportable(state: dict[str, Any], tta: bool = True, features: bool = True) -> Exportable:
    """What `dlcv export` writes for a classify checkpoint: ClassifierGraph (fp32, on the CPU) with the
    plain images' features as a second output (`features`; not for an ensemble's members), and what predict
    computes to verify it against."""
    from dlcv.models import model_from_checkpoint, model_spec
    meta = {**state["preprocess"], **({} if tta else {"tta": None})}
    name = state["config"]["model"]["name"]
    model = model_from_checkpoint(state, len(state["classes"])).eval()
    graph = ClassifierGraph(model, model_spec(name).head, meta, with_features=features).eval()
    reference = Classifier.from_checkpoint({**state, "preprocess": meta}, torch.device("cpu"), "fp32")
    recorded = state.get("inputs", {})  # the course problem and layout its run recorded (data/layouts.py)
    metadata = {"classes": state["classes"], "image_size": meta["image_size"],
                "input_size": meta.get("input_size") or meta["image_size"], "mean": meta["mean"],
                "std": meta["std"], "views": meta.get("tta"), "infer_scale": None,
                "problem": recorded.get("problem"), "layout": recorded.get("layout")}
    return Exportable(graph, ("logits", "features") if features else ("logits",), metadata, meta["image_size"],
                      reference.logits)


class EnsembleGraph(nn.Module):
    """Classifiers of the same classes on the same decoded images: the mean of their fp32 logits, each member
    computing its own checkpoint's predict (its input side, normalisation and test-time views)."""

    def __init__(self, members: list[ClassifierGraph]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(member(x) for member in self.members) / len(self.members)


def ensemble_problem(members: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Why classify checkpoints (name, checkpoint) cannot be averaged, or None: fewer than two, one listed
    twice, other classes (or their order: logits are averaged class by class), or another decoded image side
    (every member reads the same decoded images)."""
    if len(members) < 2:
        return "an ensemble needs at least two checkpoints (one alone: dlcv export)"
    (first, ref), names = members[0], [name for name, _ in members]
    files = [Path(name).resolve() for name in names]  # one file under two names is one member too
    twice = next((n for i, n in enumerate(names) if files[i] in files[:i]), None)
    if twice:
        return f"{twice} is listed twice"
    for name, state in members[1:]:
        if state["classes"] != ref["classes"]:
            same_set = sorted(state["classes"]) == sorted(ref["classes"])
            return (f"{name}: its classes differ from {first}'s ({len(state['classes'])} vs "
                    f"{len(ref['classes'])}{', the same names in another order' if same_set else ''})")
        side, ref_side = state["preprocess"]["image_size"], ref["preprocess"]["image_size"]
        if side != ref_side:
            return (f"{name} decodes images at {side} px, {first} at {ref_side} px (data.image_size): an "
                    "ensemble's members read the same decoded images")
    return None


def ensemble_exportable(members: list[tuple[str, dict[str, Any]]], tta: bool = True) -> Exportable:
    """What `dlcv classify ensemble` writes: EnsembleGraph of the members' graphs (fp32, on the CPU), verified
    against the mean of their predict paths' fp32 logits. Its metadata's preprocessing entries are the first
    member's; `members` lists each one's."""
    problem = ensemble_problem(members)
    if problem:
        raise DlcvError(problem)
    # members' features differ in size: an ensemble outputs logits only
    singles = [exportable(state, tta, features=False) for _, state in members]
    described = [{"checkpoint": name, "model": state["config"]["model"]["name"], "epoch": state.get("epoch"),
                  **{k: single.metadata[k] for k in ("input_size", "mean", "std", "views")}}
                 for (name, state), single in zip(members, singles)]
    recorded = {(single.metadata["problem"], single.metadata["layout"]) for single in singles}
    problem, layout = recorded.pop() if len(recorded) == 1 else (None, None)
    metadata = {**singles[0].metadata, "problem": problem, "layout": layout, "members": described,
                # what predict's --no-tta reads: refused when any member's views are in the graph
                "views": next((m["views"] for m in described if has_views(m["views"])), described[0]["views"])}
    references = [single.reference for single in singles]
    return Exportable(EnsembleGraph([single.graph for single in singles]).eval(), ("logits",), metadata,
                      singles[0].side, lambda images: sum(ref(images) for ref in references) / len(references))
