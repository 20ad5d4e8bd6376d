"""An exported model (`dlcv export`: ONNX or TorchScript) run as predict runs a checkpoint: with ONNX
Runtime (or torch.jit), without dlcv's model code, in fp32. The file computes the whole of predict's model
step (normalisation, test-time views, logits), its metadata says what it expects; the caller decodes the
images as dlcv does (data.images: RGB, resized to the metadata's image_size where it has one)."""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlcv import __version__, task_registry
from dlcv.errors import DlcvError
from dlcv.fileio import reading
from dlcv.inference import SIZE, class_list_problem, entries_problem, is_size

ONNX, TORCHSCRIPT, CHECKPOINT = "onnx", "torchscript", "checkpoint"
EXPORT_FORMAT = 1  # the layout of the metadata below; a file with a larger number is refused
# every key of an exported file's metadata (ONNX metadata_props; TorchScript extra files), each a JSON value
KEYS = ("dlcv_export", "dlcv_version", "task", "model", "classes", "image_size", "input_size", "mean", "std",
        "views", "infer_scale", "batch_size", "outputs")
# what some readers use when present: the course problem and layout a classifier's run recorded (hw1_1 vs
# hw1_2's warning); the mask classes of a segmenter of a dataset's own classes (segment predict writes its
# masks in their form); the members of an ensemble (`dlcv classify ensemble`), each with its preprocessing
OPTIONAL_KEYS = ("problem", "layout", "epoch", "masks", "members")
INPUT_NAME = "images"


def model_format(path: str | Path) -> str:
    """CHECKPOINT (a torch.save zip), TORCHSCRIPT (a torch.jit zip) or ONNX (a protobuf beginning with its
    ir_version, as every ONNX writer orders it); anything else is one clear error."""
    path = Path(path)
    with reading(path, "model"):
        with open(path, "rb") as fh:
            head = fh.read(1)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return TORCHSCRIPT if any(n.endswith("/constants.pkl") for n in names) else CHECKPOINT
    if head == b"\x08":
        return ONNX
    raise DlcvError(f"{path} is neither a dlcv checkpoint nor an exported model (ONNX, TorchScript)")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DlcvError("running an ONNX model needs ONNX Runtime: pip install 'dlcv[export]'") from None
    return onnxruntime


def _onnx_session(path: Path, device: torch.device):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use (tests share cores)
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ONNX Runtime's own errors: invalid protobuf, unknown operator, newer opset
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlcvError(f"cannot read ONNX model {path}: {first}") from None


def _torchscript_module(path: Path, device: torch.device):
    extra = dict.fromkeys(KEYS + OPTIONAL_KEYS, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DlcvError(f"cannot read TorchScript model {path}: {first}") from None
    raw = extra.items()
    return module.eval(), {k: v.decode() if isinstance(v, bytes) else v for k, v in raw if v}


def read_metadata(raw: dict[str, str], path: Path, fmt: str) -> dict[str, Any]:
    """The metadata of an exported file, parsed and checked: one clear error for a file without dlcv's
    metadata, a missing key, a value that is not JSON or not what the key holds, or a newer layout."""
    what = "an ONNX model" if fmt == ONNX else "a TorchScript model"
    if "dlcv_export" not in raw:
        raise DlcvError(f"{path} is {what} without dlcv's metadata (task, classes, image size): export it with "
                        "`dlcv export`")
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise DlcvError(f"{path}: its metadata lacks {', '.join(missing)} (a damaged or hand-edited export)")
    meta = {}
    for key in (*KEYS, *[k for k in OPTIONAL_KEYS if k in raw]):
        try:
            meta[key] = json.loads(raw[key])
        except json.JSONDecodeError:
            raise DlcvError(f"{path}: its metadata {key} {raw[key][:40]!r} is not JSON") from None
    problem = _metadata_problem(meta)
    if problem:
        raise DlcvError(f"{path}: {problem} (a damaged or hand-edited export)")
    return meta


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    version = meta["dlcv_export"]
    if not isinstance(version, int) or isinstance(version, bool) or version > EXPORT_FORMAT:
        return f"its metadata layout dlcv_export {version!r} is newer than this dlcv reads (up to {EXPORT_FORMAT})"
    task = meta["task"]
    entry = next((e for e in task_registry.TASKS if e.name == task and e.inference), None)
    if entry is None:
        return f"its task {task!r} is not one dlcv exports"
    if not (isinstance(meta["outputs"], list) and meta["outputs"] and all(isinstance(o, str) for o in meta["outputs"])):
        return f"its outputs {meta['outputs']!r} are not a list of output names"
    if task != "ssl":
        problem = class_list_problem(meta["classes"])
        if problem:
            return problem
    module = entry.load_inference()
    checks = {**module.PREPROCESS_CHECKS, "batch_size": SIZE,
              "image_size": (lambda v: v is None if task == "segment" else is_size(v),
                             "null (any size)" if task == "segment" else SIZE[1])}
    return entries_problem({**preprocess_of(meta), "batch_size": meta["batch_size"]}, checks, "metadata",
                           required=("image_size", "mean", "std", "batch_size"))


def preprocess_of(meta: dict[str, Any]) -> dict[str, Any]:
    """An export's metadata in a checkpoint's "preprocess" terms (what inference/ reads)."""
    return {"image_size": meta["image_size"], "input_size": meta["input_size"], "mean": meta["mean"],
            "std": meta["std"], "tta": meta["views"],
            **({"infer_scale": meta["infer_scale"]} if meta["task"] == "segment" else {})}


def metadata_entries(exportable_metadata: dict[str, Any], task: str, model: str, batch_size: int,
                     outputs: tuple[str, ...], epoch: int | None) -> dict[str, str]:
    """Every key of an exported file's metadata, as the JSON text it is stored as."""
    values = {"dlcv_export": EXPORT_FORMAT, "dlcv_version": __version__, "task": task, "model": model,
              **exportable_metadata, "batch_size": batch_size, "outputs": list(outputs), "epoch": epoch}
    return {k: json.dumps(v) for k, v in values.items()}


class ExportedModel:
    """An exported file with the interface of inference's Classifier / Segmenter / Embedder: `meta`
    (image_size, mean / std, views), `batch_size`, and logits / features / masks of uint8 images, in fp32.
    `classes`: the class names (None for a backbone)."""

    def __init__(self, path: str | Path, device: torch.device | None = None, batch_size: int | None = None,
                 fmt: str | None = None):
        self.path, self.device = Path(path), device or torch.device("cpu")
        self.format = fmt or model_format(self.path)
        if self.format == ONNX:
            self._session = _onnx_session(self.path, self.device)
            raw = self._session.get_modelmeta().custom_metadata_map
        elif self.format == TORCHSCRIPT:
            self._module, raw = _torchscript_module(self.path, self.device)
        else:
            raise DlcvError(f"{self.path} is a dlcv checkpoint, not an exported model")
        self.metadata = read_metadata(raw, self.path, self.format)
        self.task, self.classes = self.metadata["task"], self.metadata["classes"]
        self.meta = preprocess_of(self.metadata)
        self.batch_size = batch_size or self.metadata["batch_size"]
        self.outputs = self.metadata["outputs"]

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of the graph for uint8 images N x 3 x H x W, as fp32 tensors on the CPU."""
        x = images.cpu().numpy().astype(np.float32) / np.float32(255)
        if self.format == ONNX:
            outs = [torch.from_numpy(o) for o in self._session.run(None, {INPUT_NAME: x})]
        else:
            with torch.no_grad():
                out = self._module(torch.from_numpy(x).to(self.device))
            outs = [o.cpu() for o in (out if isinstance(out, (tuple, list)) else (out,))]
        return dict(zip(self.outputs, outs))

    def _output(self, images: torch.Tensor, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise DlcvError(f"{self.path}: an exported {self.task} model has no {name} output (it has "
                            f"{', '.join(self.outputs)})")
        return self.run(images)[name]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._output(images, "logits")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._output(images, "features")

    def masks(self, tiles: torch.Tensor) -> torch.Tensor:
        from dlcv.inference.segment import masks_of
        return masks_of(self.logits, tiles)


def open_exported(path: str | Path, task: str, command: str, device: torch.device | None = None,
                  batch_size: int | None = None) -> ExportedModel:
    """An exported model of `task` for `command` (e.g. "classify predict"); another task's is refused,
    naming the command that runs it."""
    model = ExportedModel(path, device, batch_size)
    if model.task != task:
        runs_it = task_registry.task(model.task).predict
        raise DlcvError(f"{path} is an exported {model.task} model, not a {task} model for `dlcv {command}`"
                        + (f" (a model for `dlcv {runs_it}`)" if runs_it else ""))
    return model


def has_views(tta: dict[str, Any] | None) -> bool:
    """Whether a test-time augmentation mapping (a checkpoint's "tta", an export's "views") adds any view."""
    return bool(tta) and bool(tta.get("flip") or tta.get("rotate90") or tta.get("translate")
                              or list(tta.get("scales", [1.0])) != [1.0])


def check_run_options(model: ExportedModel, tta: bool, precision: str) -> None:
    """A predict command's options that an exported model cannot honour, refused: its views are part of its
    graph, and it computes in fp32."""
    if not tta and has_views(model.meta["tta"]):
        raise DlcvError(f"--no-tta: the test-time views of {model.path} ({json.dumps(model.meta['tta'])}) are part "
                        "of its graph; export the checkpoint again with --no-tta for plain predictions")
    if precision not in ("auto", "fp32"):
        raise DlcvError(f"--precision {precision}: an exported model ({model.path}) computes in fp32")
