"""One inference path: each graded command (hw1_1.sh, hw1_2.sh, hw1_3.sh) predicts, label for label and
pixel for pixel, what its run's last validation predicted, and scores what summary.json says, whatever
precision and memory layout the run used. Tiny models, trained just enough to predict several classes (so
a precision that differs shows in the labels): bf16 is emulated, slowly, on AVX2-only CPUs. And the test-time
views of inference/ (classification's mirror and shifts, segmentation's flips, rotations and scales)."""
import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from conftest import assert_runs_in_a_fresh_python, seg_cfg, small_classify_cfg
from dlcv.cli import main
from dlcv.contracts.classify import accuracy_of_csvs
from dlcv.contracts.segment import score_folders
from dlcv.data import labels as labels_mod
from dlcv.data.masks import UNKNOWN, read_mask
from dlcv.engine import checkpoint
from dlcv.engine.precision import Numerics, for_predict
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.inference import checkpoint_numerics
from dlcv.inference import segment as seg_inference
from dlcv.tasks.classify import ClassifyTask
from dlcv.tasks.segment import SegmentTask

# the run's precision and layout (bf16 + channels_last: the case of the issue, the GPU recipes' defaults)
NUMERICS = {
    "bf16_channels_last": {"train.precision": "bf16", "train.channels_last": "true"},
    "fp32_contiguous": {"train.precision": "fp32", "train.channels_last": "false"},
}


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """The runs' figures (t-SNE, mask grids) are tested elsewhere; here they would take most of the time."""
    for task in (ClassifyTask, SegmentTask):
        monkeypatch.setattr(task, "finish", lambda self, ctx, rows: None)


@pytest.fixture
def validation_labels(monkeypatch):
    """The labels of every validation of a run (one list of per-batch predictions per validation), as the
    run's confusion matrix receives them: what its accuracy or mIoU counts."""
    runs = []
    reset, update = MulticlassConfusionMatrix.reset, MulticlassConfusionMatrix.update

    def recording_reset(self):
        runs.append([])
        reset(self)

    def recording_update(self, preds, target):
        runs[-1].append(preds.cpu())
        update(self, preds, target)

    monkeypatch.setattr(MulticlassConfusionMatrix, "reset", recording_reset)
    monkeypatch.setattr(MulticlassConfusionMatrix, "update", recording_update)
    return runs


def graded(command, ckpt, *args):
    """What `bash hw1_N.sh ARGS` runs (scripts/hw1_common.sh: `python -m dlcv COMMAND --model CKPT ARGS`), in
    this process: the thread count of the training before it (kernels may split work by it)."""
    assert main([*command.split(), "--model", str(ckpt), *map(str, args)]) == 0


def summary_json(run):
    return json.loads((run / "summary.json").read_text())


def labels_of_csv(path):
    return [row["label"] for row in labels_mod.read_csv_rows(path, ("filename", "label"))]


@pytest.mark.cross_path
@pytest.mark.parametrize("numerics", NUMERICS)
def test_hw1_1_predicts_the_last_validations_labels(numerics, p1_root, tmp_path, validation_labels):
    tta = {"tta.translate": 2} if numerics.startswith("bf16") else {}  # shifted views, put back in the layout
    cfg = small_classify_cfg(p1_root, **{"model.options": "{widths: [8, 16, 32]}", "train.epochs": 1,
                                         "train.eval_batch_size": 32, **NUMERICS[numerics], **tta})
    run = tmp_path / "run"
    Trainer(ClassifyTask(cfg), cfg, run).fit()
    classes = checkpoint.load(run / "checkpoints/last.pt")["classes"]
    validated = [classes[i] for i in torch.cat(validation_labels[-1]).tolist()]
    assert len(set(validated)) >= 3
    graded("classify predict", run / "checkpoints/last.pt", p1_root / "val_50", tmp_path / "pred.csv")
    assert labels_of_csv(tmp_path / "pred.csv") == validated  # val_50 in file-name order, as validated
    state = checkpoint.load(run / "checkpoints/last.pt")
    assert state["inference"] == {"precision": cfg["train"]["precision"], "channels_last": cfg["train"]["channels_last"]}
    # a checkpoint of a dlcv before the record: its config's settings, resolved on this machine as its run did
    checkpoint.save(tmp_path / "old.pt", {k: v for k, v in state.items() if k != "inference"})
    graded("classify predict", tmp_path / "old.pt", p1_root / "val_50", tmp_path / "old.csv")
    assert labels_of_csv(tmp_path / "old.csv") == validated
    truth = tmp_path / "truth.csv"
    labels_mod.write_csv(truth, ["filename", "label"],
                         [(f.name, f.name.split("_")[0]) for f in sorted((p1_root / "val_50").glob("*.png"))])
    accuracy, *_ = accuracy_of_csvs(truth, tmp_path / "pred.csv")  # `dlcv eval acc`
    assert accuracy == pytest.approx(summary_json(run)["final"]["val_acc"], abs=1e-12)


@pytest.mark.cross_path
@pytest.mark.parametrize("numerics", NUMERICS)
def test_hw1_2_predicts_the_last_validations_labels(numerics, synth_root, tmp_path, validation_labels):
    p2 = synth_root / "p2_data"
    sets = {"data.root": str(p2), "model.name": "resnet18", "data.image_size": 16, "data.limit_train": 32,
            "train.epochs": 1, "train.batch_size": 32, "train.eval_batch_size": 16, "device": "cpu",
            **NUMERICS[numerics]}
    run = tmp_path / "A"
    assert main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "A", "--out", str(run),
                 *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]) == 0
    classes = checkpoint.load(run / "checkpoints/last.pt")["classes"]
    validated = [classes[i] for i in torch.cat(validation_labels[-1]).tolist()]
    assert len(set(validated)) >= 3
    val_csv = p2 / "office" / "val.csv"
    graded("ssl predict", run / "checkpoints/last.pt", val_csv, p2 / "office" / "val", tmp_path / "out.csv")
    assert labels_of_csv(tmp_path / "out.csv") == validated  # in val.csv's order, as validated
    accuracy, *_ = accuracy_of_csvs(val_csv, tmp_path / "out.csv")
    assert accuracy == pytest.approx(summary_json(run)["final"]["val_acc"], abs=1e-12)


@pytest.mark.cross_path
@pytest.mark.parametrize("numerics", NUMERICS)
def test_hw1_3_predicts_the_last_validations_masks(numerics, synth_root, tmp_path, validation_labels):
    p3 = synth_root / "p3_data"
    # bf16: also a resolution of its own (data.infer_scale) and test-time scales and mirror images
    views = {"data.infer_scale": 0.5, "tta.scales": "[1.0, 1.5]", "tta.flip": "true"} \
        if numerics.startswith("bf16") else {}
    cfg = seg_cfg(p3, **{"model.options": "{width: 8}", "train.epochs": 2, "data.limit_train": 16,
                         "train.eval_batch_size": 4, **NUMERICS[numerics], **views})
    run = tmp_path / "run"
    Trainer(SegmentTask(cfg), cfg, run).fit()
    validated = torch.cat(validation_labels[-1]).numpy()
    assert len(np.unique(validated)) >= 3
    graded("segment predict", run / "checkpoints/last.pt", p3 / "validation", tmp_path / "masks")
    masks = sorted((tmp_path / "masks").glob("*_mask.png"))
    predicted = np.stack([read_mask(m, UNKNOWN)[0] for m in masks])  # tiles in id order, as validated
    assert predicted.shape == validated.shape and len(masks) == 11
    assert (predicted == validated).all(), f"{(predicted != validated).sum()} pixels differ"
    _, miou = score_folders(p3 / "validation", tmp_path / "masks")  # `dlcv segment miou`
    assert miou == pytest.approx(summary_json(run)["final"]["val_miou"], abs=1e-12)


def test_predict_runs_the_validated_precision_where_the_device_can_and_says_when_not(caplog):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # no CUDA here: torch says it cannot run bf16
    validated = Numerics("bf16", True)
    assert for_predict(validated, "auto", cpu) == validated and for_predict(validated, "fp16", gpu) == Numerics("fp16", True)
    with caplog.at_level("INFO", logger="dlcv"):
        assert for_predict(validated, "auto", gpu) == Numerics("fp32", True)
        assert "cuda does not run bf16: predicting in fp32 (the run validated in bf16; a few labels may differ" in caplog.text
        caplog.clear()
        assert for_predict(validated, "fp32", cpu) == Numerics("fp32", True)  # --precision fp32
        assert "predicting in fp32 (--precision); the run validated in bf16: a few labels may differ" in caplog.text


def test_a_checkpoint_without_the_record_runs_as_its_config_resolves_and_a_bad_record_is_named():
    cpu = torch.device("cpu")
    old = {"config": {"train": {"precision": "auto", "channels_last": "auto"}, "model": {"name": "fcn32s_vgg16"}}}
    assert checkpoint_numerics(old, cpu, "auto", "old.pt") == Numerics("fp32", False)  # the registry's CPU traits
    old["config"]["train"] = {"precision": "bf16", "channels_last": True}
    assert checkpoint_numerics(old, cpu, "auto", "old.pt") == Numerics("bf16", True)
    with pytest.raises(DlcvError, match=r"^x.pt: its 'inference' entry \{'precision': 'fp8'\} is not \{precision: one of "
                                        r"fp32, bf16, fp16, channels_last: true/false\}$"):
        checkpoint_numerics({**old, "inference": {"precision": "fp8"}}, cpu, "auto", "x.pt")


def test_the_graded_commands_import_no_task_and_not_the_trainer():
    assert_runs_in_a_fresh_python(
        "import sys, dlcv.contracts.classify, dlcv.contracts.segment, dlcv.contracts.backbone; "
        "bad = [m for m in sys.modules if m.startswith('dlcv.tasks') or m == 'dlcv.engine.trainer']; "
        "assert not bad, bad")


@pytest.mark.parametrize("size", [1, 512, 1024, 1025, 1800, 4000, 4321])
def test_windows_partition_each_side_and_keep_a_margin_inside_each_window(size):
    from dlcv.inference.segment import WINDOW, WINDOW_MARGIN, windows
    spans = windows(size)
    assert [k0 for _, _, k0, _ in spans] == [0] + [k1 for _, _, _, k1 in spans[:-1]]  # contiguous
    assert spans[-1][3] == size
    for start, end, keep_start, keep_end in spans:
        assert 0 <= start <= keep_start < keep_end <= end <= size
        assert end - start == min(size, WINDOW)
        assert keep_start == 0 or keep_start - start >= WINDOW_MARGIN
        assert keep_end == size or end - keep_end >= WINDOW_MARGIN


class _PixelwiseSegmenter(torch.nn.Module):
    """Logits of each pixel from that pixel alone: a windowed prediction must equal the whole one exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 7, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_a_large_image_goes_through_in_windows_and_gets_the_whole_images_mask(monkeypatch):
    from dlcv.inference.segment import WINDOW, Segmenter
    torch.manual_seed(0)
    meta = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "tta": None, "infer_scale": 1.0}
    segmenter = Segmenter(_PixelwiseSegmenter().eval(), meta, Numerics("fp32", False), 4, torch.device("cpu"))
    tile = torch.randint(0, 256, (1, 3, 2100, 1100), dtype=torch.uint8)
    whole = segmenter.logits(tile).argmax(1).to(torch.uint8)
    seen = []
    logits = segmenter._logits  # what each model pass gets
    monkeypatch.setattr(segmenter, "_logits", lambda x: seen.append(tuple(x.shape[-2:])) or logits(x))
    masks = segmenter.masks(tile)
    assert masks.shape == (1, 2100, 1100) and masks.dtype == torch.uint8
    assert torch.equal(masks, whole)
    assert len(seen) == 3 * 2 and all(max(shape) <= WINDOW for shape in seen)


def test_segment_predict_writes_a_large_images_mask_at_its_size(synth_root, tmp_path):
    from PIL import Image
    cfg = seg_cfg(synth_root / "p3_data", **{"model.options": "{width: 8}", "train.epochs": 1,
                                             "data.limit_train": 8})
    run = tmp_path / "run"
    Trainer(SegmentTask(cfg), cfg, run).fit()
    images = tmp_path / "large"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (1030, 1100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "0000_sat.jpg")
    Image.fromarray(rgb[:300, :400]).save(images / "0001_sat.jpg")
    assert main(["segment", "predict", "--ckpt", str(run / "checkpoints" / "last.pt"), str(images),
                 str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "0000_mask.png").size == (1100, 1030)
    assert Image.open(tmp_path / "out" / "0001_mask.png").size == (400, 300)


def test_tta_averages_the_mirror_and_shifted_views():
    from dlcv.inference.classify import tta_logits

    class TopLeftMinusTopRight(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1]], 1)

    x = torch.arange(16.0).view(1, 1, 4, 4)
    model = TopLeftMinusTopRight()
    assert tta_logits(model, x, None).tolist() == [[0.0, 3.0]]
    assert tta_logits(model, x, {"flip": True, "translate": 0}).tolist() == [[1.5, 1.5]]  # (0+3)/2 each
    # translate 1: the reflect-padded image cut at its top-left and bottom-right corners, 1/4 weight each;
    # both cuts have x[1, 1] = 5 and x[1, 2] = 6 in their top corners: 0.5 * [0, 3] + 0.5 * [5, 6]
    assert tta_logits(model, x, {"flip": False, "translate": 1}).tolist() == [[2.5, 4.5]]


@pytest.mark.cross_path
def test_tta_is_the_same_in_validation_and_predict(p1_root, tmp_path):
    from dlcv.data.images import list_images
    from dlcv.engine.distributed import pick_device
    from dlcv.contracts.classify import infer, load_classifier

    cfg = small_classify_cfg(p1_root, **{"tta.flip": True, "tta.translate": 2, "train.eval_batch_size": 99})
    summary = Trainer(ClassifyTask(cfg), cfg, tmp_path / "run").fit()
    classifier, _ = load_classifier(tmp_path / "run" / "checkpoints" / "last.pt", pick_device("cpu"), batch_size=7)
    assert classifier.meta["tta"] == {"flip": True, "translate": 2}
    files = list_images(p1_root / "val_50")
    preds, _ = infer(classifier, files)
    accuracy = sum(int(p) == int(f.name.split("_")[0]) for p, f in zip(preds, files)) / len(files)
    assert summary.final["val_acc"] == pytest.approx(accuracy, abs=1 / len(files) + 1e-9)  # see above
    plain, _ = load_classifier(tmp_path / "run" / "checkpoints" / "last.pt", pick_device("cpu"), tta=False)
    assert plain.meta["tta"] is None  # `predict --no-tta`


class _Counting(torch.nn.Module):
    """A 1x1 conv (equivariant to flips and rotations) that counts its calls."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls = torch.nn.Conv2d(3, 7, 1), 0

    def forward(self, x):
        self.calls += 1
        return {"out": self.conv(x)}


@pytest.mark.parametrize("tta,views", [(None, 1), ({"flip": True, "rotate90": False}, 2),
                                       ({"flip": False, "rotate90": True}, 4), ({"flip": True, "rotate90": True}, 8)])
def test_tta_maps_every_view_back(tta, views):
    model, x = _Counting(), torch.rand(2, 3, 32, 48)  # not square: rotated views change shape
    with torch.no_grad():
        plain, averaged = model.conv(x), seg_inference.tta_logits(model, x, tta)
    assert model.calls == views and averaged.shape == (2, 7, 32, 48)
    assert torch.allclose(averaged, plain, atol=1e-5)  # an equivariant model: every view maps back exactly
    # a model that sees position (left half zero) shows each view is mapped back where it came from
    ramp = torch.zeros(1, 7, 32, 48)
    ramp[..., 24:] = 1.0
    left_blind = lambda v: {"out": ramp.expand(len(v), -1, -1, -1)}  # noqa: E731
    out = seg_inference.tta_logits(left_blind, x, {"flip": True, "rotate90": False})
    assert torch.allclose(out, torch.full_like(out, 0.5))  # the mirror's ramp lands on the other half


def test_tile_logits_at_a_smaller_scale_come_back_at_the_tile_size():
    model = _Counting()
    x = torch.rand(1, 3, 8, 8).repeat_interleave(8, -1).repeat_interleave(8, -2)  # 64 x 64, flat 8 px blocks
    with torch.no_grad():
        full = seg_inference.tile_logits(model, x, None)
        half = seg_inference.tile_logits(model, x, {"flip": True, "rotate90": False}, scale=0.5)
        assert torch.equal(full, seg_inference.tta_logits(model, x, None))
        assert half.shape == full.shape == (1, 7, 64, 64)
        centres = (slice(None), slice(None), slice(3, None, 8), slice(3, None, 8))  # the middle of each block
        assert torch.allclose(half[centres], full[centres], atol=1e-4)  # a 1x1 conv commutes with resizing
        seen = []
        seg_inference.tile_logits(lambda v: seen.append(v.shape) or {"out": torch.zeros(1, 7, *v.shape[-2:])}, x, None, 0.5)
        assert seen == [(1, 3, 32, 32)]  # the model saw the tile at half its size


def test_tile_logits_average_the_test_time_scales():
    x = torch.rand(2, 3, 16, 16)
    seen = []

    def side_as_logit(v):  # every logit is the side of the view the model was shown
        seen.append(tuple(v.shape[-2:]))
        return {"out": torch.full((len(v), 7, *v.shape[-2:]), float(v.shape[-1]))}

    out = seg_inference.tile_logits(side_as_logit, x, {"flip": False, "rotate90": True, "scales": [0.75, 1.0, 1.25]})
    assert out.shape == (2, 7, 16, 16) and torch.allclose(out, torch.full_like(out, (12 + 16 + 20) / 3))
    assert seen == [(12, 12)] * 4 + [(16, 16)] * 4 + [(20, 20)] * 4  # 4 rotations at each scale
    seen.clear()
    seg_inference.tile_logits(side_as_logit, x, {"flip": False, "rotate90": False, "scales": [0.75, 1.25]}, scale=0.5)
    assert seen == [(6, 6), (10, 10)]  # the scales multiply data.infer_scale
