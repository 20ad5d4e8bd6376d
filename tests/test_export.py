"""A trained model leaves dlcv: `dlcv export` (ONNX, TorchScript) computes what predict computes, the predict
commands and the graded scripts take the exported file, and the Python API (dlcv.load) predicts what the
commands predict. Tiny P1 (fp32), P2 and P3 (bf16-trained, emulated slowly on AVX2: really tiny) models.

Tolerance: an exported model's logits equal the checkpoint's fp32 logits (`predict --precision fp32`) within
TOLERANCE (measured: below 1e-6 on these models; ONNX Runtime's kernels sum in other orders), and its labels
and pixels are equal."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dlcv
from conftest import REPO, assert_runs_in_a_fresh_python, seg_cfg, small_classify_cfg
from dlcv.cli import main
from dlcv.data import labels as labels_mod
from dlcv.data.images import list_images, load_images, read_rgb
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.inference.classify import Classifier, read_checkpoint as read_classify
from dlcv.inference.exported import ExportedModel
from dlcv.inference.segment import Segmenter, read_checkpoint as read_segment
from dlcv.tasks.classify import ClassifyTask
from dlcv.tasks.segment import SegmentTask

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    """{problem: its checkpoint}: P1 fp32 with mirror + shift views; P2 (CSV labels, hw1_2.sh's kind) and P3
    (rotations, infer_scale 0.5: the resize path) bf16-trained with channels_last."""
    base = tmp_path_factory.mktemp("export_runs")
    p1 = small_classify_cfg(synth_root / "p1_data", **{"model.options": "{widths: [8, 16, 32]}", "train.epochs": 1,
                                                        "tta.flip": True, "tta.translate": 2})
    p2 = small_classify_cfg(synth_root / "p2_data", **{
        "data.train_dir": "office/train", "data.train_csv": "office/train.csv", "data.val_dir": "office/val",
        "data.val_csv": "office/val.csv", "data.image_size": 16, "model.options": "{widths: [4, 8, 8]}",
        "train.epochs": 1, "train.batch_size": 32, "train.eval_batch_size": 16, "train.precision": "bf16",
        "train.channels_last": True, "augment.crop_padding": 1})
    p3 = seg_cfg(synth_root / "p3_data", **{"model.options": "{width: 4}", "train.epochs": 1, "data.limit_train": 4,
                                             "data.limit_val": 3, "data.crop_size": 64, "data.infer_scale": 0.5,
                                             "tta.rotate90": True, "train.precision": "bf16",
                                             "train.channels_last": True})
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, task, cfg in (("p1", ClassifyTask, p1), ("p2", ClassifyTask, p2), ("p3", SegmentTask, p3)):
            patch.setattr(task, "finish", lambda self, ctx, rows: None)  # no figures: tested elsewhere
            Trainer(task(cfg), cfg, base / name).fit()
            out[name] = base / name / "checkpoints" / "last.pt"
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """(problem, format, views) -> the exported file, written once by `dlcv export`."""
    folder, files = tmp_path_factory.mktemp("exported"), {}

    def get(problem, fmt, views=True):
        key = (problem, fmt, views)
        if key not in files:
            out = folder / f"{problem}{'' if views else '_plain'}.{'onnx' if fmt == 'onnx' else 'pt'}"
            assert main(["export", "--ckpt", str(runs[problem]), "--format", fmt, "--out", str(out),
                         *([] if views else ["--no-tta"])]) == 0
            files[key] = out
        return files[key]
    return get


def classify_images(synth_root, problem, n):
    folder = synth_root / ("p1_data/val_50" if problem == "p1" else "p2_data/office/val")
    return list_images(folder)[:n]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("problem", ["p1", "p2"])
def test_an_exported_classifier_computes_the_checkpoints_fp32_logits(problem, fmt, runs, exported, synth_root):
    state = read_classify(runs[problem])
    model = ExportedModel(exported(problem, fmt))
    reference = Classifier.from_checkpoint(state, CPU, "fp32")
    for n in (1, 7):  # the batch axis is dynamic
        images = load_images(classify_images(synth_root, problem, n), state["preprocess"]["image_size"],
                             use_cache=False)
        ours, theirs = model.logits(images), reference.logits(images)
        assert ours.shape == theirs.shape == (n, len(state["classes"]))
        assert (ours - theirs).abs().max() < TOLERANCE
        assert torch.equal(ours.argmax(1), theirs.argmax(1))
    # the metadata round trip: what the file says is what the checkpoint holds
    pre = state["preprocess"]
    assert {k: model.metadata[k] for k in ("task", "model", "classes", "image_size", "mean", "std", "views",
                                           "batch_size", "epoch", "outputs")} == {
        "task": "classify", "model": "cifar_convnet", "classes": state["classes"], "image_size": pre["image_size"],
        "mean": pre["mean"], "std": pre["std"], "views": pre["tta"], "batch_size": state["config"]["train"]["eval_batch_size"],
        "epoch": state["epoch"], "outputs": ["logits", "features"]}
    assert model.metadata["dlcv_version"] == dlcv.__version__
    assert (model.metadata["problem"], model.metadata["layout"]) == ((problem, "course") if problem == "p1" else
                                                                      (problem, "csv"))
    features = reference.features(images)
    assert (model.features(images) - features).abs().max() < TOLERANCE  # the second-last layer, plain images


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_segmenter_takes_any_size_and_predicts_the_checkpoints_pixels(fmt, runs, exported, synth_root):
    state = read_segment(runs["p3"])
    model = ExportedModel(exported("p3", fmt))
    reference = Segmenter.from_checkpoint(state, CPU, "fp32")
    tiles = sorted((synth_root / "p3_data" / "validation").glob("*_sat.jpg"))
    odd = torch.from_numpy(np.array(Image.fromarray(read_rgb(tiles[0])).resize((380, 500)))).permute(2, 0, 1)
    batches = [torch.stack([torch.from_numpy(read_rgb(t).copy()).permute(2, 0, 1) for t in tiles[:n]])
               for n in (1, 7)]
    for images in [*batches, odd[None]]:  # batches of 1 and 7 tiles, and one image of 500 x 380
        ours, theirs = model.logits(images), reference.logits(images)
        assert ours.shape == theirs.shape == (len(images), 7, *images.shape[-2:])
        assert (ours - theirs).abs().max() < TOLERANCE
        assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert model.metadata["views"] == state["preprocess"]["tta"] and model.metadata["infer_scale"] == 0.5
    assert model.metadata["image_size"] is None and model.classes[0] == "urban"


@pytest.mark.parametrize("problem,fmt", [("p1", "onnx"), ("p3", "torchscript")])
def test_no_tta_leaves_the_views_out_and_a_views_graph_refuses_no_tta(problem, fmt, runs, exported, synth_root,
                                                                    tmp_path, capsys):
    plain = ExportedModel(exported(problem, fmt, views=False))
    assert plain.metadata["views"] is None
    read = read_classify if problem == "p1" else read_segment
    state = read(runs[problem])
    state["preprocess"]["tta"] = None
    predictor = (Classifier if problem == "p1" else Segmenter).from_checkpoint(state, CPU, "fp32")
    images = (load_images(classify_images(synth_root, "p1", 7), 32, use_cache=False) if problem == "p1" else
              torch.from_numpy(read_rgb(next((synth_root / "p3_data/validation").glob("*_sat.jpg"))).copy())
              .permute(2, 0, 1)[None])
    assert (plain.logits(images) - predictor.logits(images)).abs().max() < TOLERANCE
    if problem == "p1":  # predict --no-tta with a graph that holds views: one line, nothing written
        code = main(["classify", "predict", "--model", str(exported("p1", fmt)), "--no-tta",
                     str(synth_root / "p1_data/val_50"), str(tmp_path / "o.csv")])
        assert code == 2 and "are part of its graph; export the checkpoint again with --no-tta" in capsys.readouterr().err
        assert not (tmp_path / "o.csv").exists()


def run_script(script, env_var, model, *args):
    done = subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, env_var: str(model), "DLCV_PYTHON": sys.executable}, timeout=600)
    assert done.returncode == 0, done.stderr


def test_the_graded_scripts_on_exported_models_write_what_the_checkpoints_write_in_fp32(runs, exported, synth_root,
                                                                                       tmp_path):
    p1, p2, p3 = synth_root / "p1_data", synth_root / "p2_data", synth_root / "p3_data"
    run_script("hw1_1.sh", "DLCV_P1_CKPT", exported("p1", "onnx"), p1 / "val_50", tmp_path / "1_onnx.csv")
    assert main(["classify", "predict", "--model", str(runs["p1"]), "--precision", "fp32", str(p1 / "val_50"),
                 str(tmp_path / "1_ckpt.csv")]) == 0
    assert (tmp_path / "1_onnx.csv").read_bytes() == (tmp_path / "1_ckpt.csv").read_bytes()
    run_script("hw1_2.sh", "DLCV_P2_CKPT", exported("p2", "onnx"), p2 / "office/val.csv", p2 / "office/val",
               tmp_path / "2_onnx.csv")
    assert main(["ssl", "predict", "--ckpt", str(runs["p2"]), "--precision", "fp32", str(p2 / "office/val.csv"),
                 str(p2 / "office/val"), str(tmp_path / "2_ckpt.csv")]) == 0
    assert (tmp_path / "2_onnx.csv").read_bytes() == (tmp_path / "2_ckpt.csv").read_bytes()
    run_script("hw1_3.sh", "DLCV_P3_CKPT", exported("p3", "onnx"), p3 / "validation", tmp_path / "3_onnx")
    assert main(["segment", "predict", "--model", str(runs["p3"]), "--precision", "fp32", str(p3 / "validation"),
                 str(tmp_path / "3_ckpt")]) == 0
    masks = sorted(p.name for p in (tmp_path / "3_ckpt").iterdir())
    assert masks and masks == sorted(p.name for p in (tmp_path / "3_onnx").iterdir())
    assert all((tmp_path / "3_onnx" / m).read_bytes() == (tmp_path / "3_ckpt" / m).read_bytes() for m in masks)
    # an ONNX model of another task: one line, exit code 2, nothing written
    done = subprocess.run(["bash", str(REPO / "hw1_3.sh"), str(p3 / "validation"), str(tmp_path / "3_wrong")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DLCV_P3_CKPT": str(exported("p1", "onnx")), "DLCV_PYTHON": sys.executable})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and not (tmp_path / "3_wrong").exists()
    assert "is an exported classify model, not a segment model for `dlcv segment predict`" in done.stderr


def test_an_onnx_model_predicts_without_dlcvs_model_code(exported, synth_root, tmp_path):
    assert_runs_in_a_fresh_python(
        "import sys; from dlcv.cli import main; "
        f"assert main(['classify', 'predict', '--model', {str(exported('p1', 'onnx'))!r}, "
        f"{str(synth_root / 'p1_data/val_50')!r}, {str(tmp_path / 'o.csv')!r}]) == 0; "
        "assert 'dlcv.models' not in sys.modules, 'model code imported'")  # (torchvision is, for its image-file rules)


def test_topk_adds_the_most_probable_classes_and_the_graded_columns_stay(runs, exported, synth_root, tmp_path):
    for model in (runs["p1"], exported("p1", "onnx")):
        out = tmp_path / f"{model.suffix[1:]}.csv"
        assert main(["classify", "predict", "--model", str(model), "--topk", "3", "--precision", "fp32",
                     str(synth_root / "p1_data/val_50"), str(out)]) == 0
        rows = labels_mod.read_csv_rows(out, ("filename", "label"))
        assert out.read_text().splitlines()[0] == "filename,label,label_1,prob_1,label_2,prob_2,label_3,prob_3"
        for row in rows:
            probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
            assert row["label"] == row["label_1"] and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.000002
    ours, theirs = (labels_mod.read_csv_rows(tmp_path / f"{name}.csv", ("filename", "label")) for name in ("onnx", "pt"))
    for a, b in zip(ours, theirs):  # the same classes; probabilities within rounding of the 6th decimal
        assert [a[f"label_{i}"] for i in (1, 2, 3)] == [b[f"label_{i}"] for i in (1, 2, 3)]
        assert all(abs(float(a[f"prob_{i}"]) - float(b[f"prob_{i}"])) < 2e-6 for i in (1, 2, 3))


def test_dlcv_load_predicts_what_classify_predict_writes(runs, exported, synth_root, tmp_path):
    folder = synth_root / "p1_data" / "val_50"
    assert main(["classify", "predict", "--model", str(runs["p1"]), str(folder), str(tmp_path / "o.csv")]) == 0
    written = [r["label"] for r in labels_mod.read_csv_rows(tmp_path / "o.csv", ("filename", "label"))]
    files = list_images(folder)
    model = dlcv.load(runs["p1"], device="cpu")
    assert model.task == "classify" and model.classes == read_classify(runs["p1"])["classes"]
    assert model.predict(files) == written
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert model.predict(arrays) == written  # a batch N x H x W x 3
    assert model.predict(torch.from_numpy(arrays).permute(0, 3, 1, 2)) == written  # N x 3 x H x W, as read_image
    assert model.predict(Image.open(files[0])) == written[0]
    probs = model.predict(files[:3], probabilities=True)
    assert len(probs) == 3 and probs[0].shape == (len(model.classes),) and abs(probs[0].sum() - 1) < 1e-5
    assert model.embed(files[:2])[0].shape == (32,)
    onnx = dlcv.load(exported("p1", "onnx"))
    assert main(["classify", "predict", "--model", str(runs["p1"]), "--precision", "fp32", str(folder),
                 str(tmp_path / "fp32.csv")]) == 0
    assert onnx.predict(arrays) == [r["label"] for r in labels_mod.read_csv_rows(tmp_path / "fp32.csv",
                                                                                 ("filename", "label"))]
    assert np.abs(onnx.embed(arrays[:2])[1] - model.embed(arrays[:2])[1]).max() < TOLERANCE
    with pytest.raises(DlcvError, match="segment\\(\\) needs a segment model"):
        onnx.segment(arrays[0])
    with pytest.raises(DlcvError, match="give uint8 pixels"):
        model.predict(arrays[0].astype(np.float32))


def test_dlcv_load_segments_as_segment_predict(runs, exported, synth_root, tmp_path):
    from dlcv.data.masks import read_mask
    folder = synth_root / "p3_data" / "validation"
    assert main(["segment", "predict", "--model", str(runs["p3"]), "--precision", "fp32", str(folder),
                 str(tmp_path / "masks")]) == 0
    tile = sorted(folder.glob("*_sat.jpg"))[0]
    expected, _ = read_mask(tmp_path / "masks" / tile.name.replace("_sat.jpg", "_mask.png"), 6)
    for model in (dlcv.load(runs["p3"], precision="fp32"), dlcv.load(exported("p3", "torchscript"))):
        assert model.classes[-1] == "unknown"
        assert np.array_equal(model.segment(tile), expected)


@pytest.fixture
def bad(exported, tmp_path):
    """Files for the bad-input cases: not a model, an ONNX model without one metadata key."""
    import onnx
    (tmp_path / "notes.onnx").write_text("not a model\n")
    proto = onnx.load(str(exported("p1", "onnx")))
    kept = [p for p in proto.metadata_props if p.key != "views"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "no_views.onnx"))
    (tmp_path / "masks").mkdir()
    return tmp_path


BAD_CASES = [  # (case, argv, expected fragment of the one line)
    ("neither a checkpoint nor an export", ["classify", "predict", "--model", "{x}/notes.onnx", "{p1}/val_50", "{x}/o.csv"],
     "notes.onnx is neither a dlcv checkpoint nor an exported model (ONNX, TorchScript)"),
    ("export of a file that is no checkpoint", ["export", "--ckpt", "{x}/notes.onnx", "--format", "onnx", "--out",
                                                "{x}/m.onnx"], "notes.onnx"),
    ("--out over the checkpoint", ["export", "--ckpt", "{x}/p1.pt", "--format", "torchscript", "--out", "{x}/p1.pt"],
     "--out {x}/p1.pt is an input of this command too"),
    ("--out over another file", ["export", "--ckpt", "{x}/p1.pt", "--format", "torchscript", "--out", "{x}/notes.onnx"],
     "--out {x}/notes.onnx exists and is not an exported model; pick another file"),
    ("an ONNX model of another task to segment predict", ["segment", "predict", "--model", "{p1_onnx}",
                                                          "{p3}/validation", "{x}/masks"],
     "is an exported classify model, not a segment model for `dlcv segment predict` (a model for `dlcv classify "
     "predict`)"),
    ("an ONNX model without a metadata key", ["classify", "predict", "--model", "{x}/no_views.onnx", "{p1}/val_50",
                                              "{x}/o.csv"], "no_views.onnx: its metadata lacks views"),
    ("--precision bf16 on an exported model", ["classify", "predict", "--model", "{p1_onnx}", "--precision", "bf16",
                                               "{p1}/val_50", "{x}/o.csv"], "computes in fp32"),
    ("--topk beyond the classes", ["classify", "predict", "--model", "{p1_onnx}", "--topk", "11", "{p1}/val_50",
                                   "{x}/o.csv"], "--topk 11: {p1_onnx} has only 10 classes"),
    ("--out that names no format", ["export", "--ckpt", "{x}/p1.pt", "--out", "{x}/m.bin"],
     "--out {x}/m.bin: name the format with --format onnx|torchscript (or end the name in .onnx or .pt)"),
    ("an ensemble of other classes", ["classify", "ensemble", "{x}/p1.pt", "{x}/p2.pt", "--out", "{x}/e.pt"],
     "{x}/p2.pt: its classes differ from {x}/p1.pt's (6 vs 10)"),
    ("an ensemble with a segmenter", ["classify", "ensemble", "{x}/p1.pt", "{x}/p3.pt", "--out", "{x}/e.pt"],
     "{x}/p3.pt is a checkpoint of task 'segment', not 'classify'"),
    ("an ensemble with an exported member", ["classify", "ensemble", "{x}/p1.pt", "{p1_onnx}", "--out", "{x}/e.pt"],
     "{p1_onnx} is an exported model; an ensemble is made of dlcv checkpoints"),
    ("an ensemble of one", ["classify", "ensemble", "{x}/p1.pt", "--out", "{x}/e.pt"],
     "an ensemble needs at least two checkpoints (one alone: dlcv export)"),
]


@pytest.mark.parametrize("case,argv,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, argv, expected, bad, runs, exported, synth_root,
                                                            capsys):
    for problem in ("p1", "p2", "p3"):
        shutil.copy(runs[problem], bad / f"{problem}.pt")
    fields = {"x": bad, "p1": synth_root / "p1_data", "p3": synth_root / "p3_data", "p1_onnx": exported("p1", "onnx")}
    before = sorted(p.name for p in bad.rglob("*"))
    code = main([a.format(**fields) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("dlcv: error:") == 1 and "Traceback" not in out + err, err
    assert expected.format(**fields) in err, err
    assert sorted(p.name for p in bad.rglob("*")) == before


def test_an_unknown_format_is_a_usage_error(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt", str(runs["p1"]), "--format", "tflite", "--out", str(tmp_path / "m.tflite")])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_export_whose_labels_differ_is_refused_and_not_written(runs, tmp_path, monkeypatch, capsys):
    from dlcv import export
    from dlcv.inference import classify

    real = classify.exportable

    def wrong(state, tta=True):  # the graph's logits upside down: what a broken exporter would write
        ex = real(state, tta)
        graph = ex.graph

        class Negated(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = graph

            def forward(self, x):
                logits, features = self.inner(x)
                return -logits, features
        ex.graph = Negated()
        return ex

    monkeypatch.setattr(classify, "exportable", wrong)
    monkeypatch.setattr(export, "TIE", 0.0)  # the tiny model's top logits may be close: no label counts as a tie
    code = main(["export", "--ckpt", str(runs["p1"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "m.pt: not written: the exported model differs from the checkpoint" in err
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary
    # a label that differs where the checkpoint's two top logits tie (within TIE) is rounding's choice
    assert not export.Verification(4, 1e-6, 3, 4, "images", ties=1).refused
    assert export.Verification(4, 1e-6, 3, 4, "images").refused


@pytest.fixture(scope="module")
def second_p1(synth_root, tmp_path_factory):
    """Another P1 classifier, for ensembles with runs["p1"]: another seed and width, a 40 px model input (its
    own resize), no test-time views."""
    out = tmp_path_factory.mktemp("second_p1") / "run"
    cfg = small_classify_cfg(synth_root / "p1_data", **{"model.options": "{widths: [8, 16, 16]}", "train.epochs": 1,
                                                         "train.seed": 1, "data.input_size": 40})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClassifyTask, "finish", lambda self, ctx, rows: None)
        Trainer(ClassifyTask(cfg), cfg, out).fit()
    return out / "checkpoints" / "last.pt"


def test_an_ensemble_predicts_the_argmax_of_its_members_mean_logits(runs, second_p1, synth_root, tmp_path):
    members, val = [runs["p1"], second_p1], synth_root / "p1_data" / "val_50"
    files = list_images(val)
    images = load_images(files, 32, use_cache=False)
    logits = [Classifier.from_checkpoint(read_classify(m), CPU, "fp32").logits(images) for m in members]
    mean = (logits[0] + logits[1]) / 2
    classes = read_classify(runs["p1"])["classes"]
    expected = [classes[i] for i in mean.argmax(1)]
    # TorchScript (named by the suffix) through the graded script; ONNX through classify predict
    assert main(["classify", "ensemble", *map(str, members), "--out", str(tmp_path / "ens.pt")]) == 0
    run_script("hw1_1.sh", "DLCV_P1_CKPT", tmp_path / "ens.pt", val, tmp_path / "ens_pt.csv")
    assert main(["classify", "ensemble", *map(str, members), "--out", str(tmp_path / "ens.onnx")]) == 0
    assert main(["classify", "predict", "--model", str(tmp_path / "ens.onnx"), str(val),
                 str(tmp_path / "ens_onnx.csv")]) == 0
    names = [f.name for f in files]
    for csv in ("ens_pt.csv", "ens_onnx.csv"):
        assert labels_mod.read_labelled_csv(tmp_path / csv) == (names, expected)
    model = ExportedModel(tmp_path / "ens.onnx")
    ours = model.logits(images)
    assert (ours - mean).abs().max() < TOLERANCE and (ours - logits[0]).abs().max() > 100 * TOLERANCE
    assert model.outputs == ["logits"] and model.metadata["model"] == "ensemble(cifar_convnet, cifar_convnet)"
    described = [(m["checkpoint"], m["input_size"], m["views"]) for m in model.metadata["members"]]
    assert described == [(str(runs["p1"]), 32, {"flip": True, "translate": 2}),
                         (str(second_p1), 40, {"flip": False, "translate": 0})]
    assert model.metadata["views"] == {"flip": True, "translate": 2}  # predict's --no-tta is refused


def test_an_ensembles_members_must_read_the_same_images_once_each():
    from dlcv.inference.classify import ensemble_problem

    def state(classes=("a", "b"), side=32):
        return {"classes": list(classes), "preprocess": {"image_size": side}}
    assert ensemble_problem([("x.pt", state()), ("y.pt", state())]) is None
    assert ensemble_problem([("x.pt", state()), ("y.pt", state(side=64))]) == (
        "y.pt decodes images at 64 px, x.pt at 32 px (data.image_size): an ensemble's members read the same "
        "decoded images")
    assert ensemble_problem([("x.pt", state()), ("y.pt", state(("b", "a")))]) == (
        "y.pt: its classes differ from x.pt's (2 vs 2, the same names in another order)")
    assert ensemble_problem([("x.pt", state()), ("y.pt", state()), ("./x.pt", state())]) == "./x.pt is listed twice"


def test_an_ssl_checkpoint_exports_its_backbones_features(p2_root_for_ssl, tmp_path):
    ckpt = p2_root_for_ssl
    out = tmp_path / "backbone.pt"
    assert main(["export", "--ckpt", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    exported_model, model = dlcv.load(out), dlcv.load(ckpt, precision="fp32")
    assert exported_model.task == model.task == "ssl" and exported_model.classes is None
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    ours, theirs = np.stack(exported_model.embed(images)), np.stack(model.embed(images))
    assert ours.shape == (3, 512) and np.abs(ours - theirs).max() < TOLERANCE
    with pytest.raises(DlcvError, match="predict\\(\\) needs a classify model"):
        model.predict(images)


@pytest.fixture(scope="module")
def p2_root_for_ssl(synth_root, tmp_path_factory):
    from conftest import ssl_cfg
    from dlcv.tasks.ssl import SSLTask
    cfg = ssl_cfg(synth_root / "p2_data", **{"train.epochs": 1, "data.limit_train": 32, "knn.train_dir": "null",
                                             "embed_std_images": 32})
    out = tmp_path_factory.mktemp("ssl") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SSLTask, "finish", lambda self, ctx, rows: None)
        Trainer(SSLTask(cfg), cfg, out).fit()
    return out / "checkpoints" / "last.pt"


def test_validation_autocasts_once(synth_root, tmp_path, monkeypatch):
    """One precision decision (the Context's Numerics), one autocast around every forward pass: never an
    autocast inside another."""
    depth, deepest = [0], [0]
    real_enter, real_exit = torch.autocast.__enter__, torch.autocast.__exit__

    def enter(self):
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        return real_enter(self)

    def exit_(self, *args):
        depth[0] -= 1
        return real_exit(self, *args)

    monkeypatch.setattr(torch.autocast, "__enter__", enter)
    monkeypatch.setattr(torch.autocast, "__exit__", exit_)
    cfg = small_classify_cfg(synth_root / "p1_data", **{"model.options": "{widths: [4, 4, 4]}", "train.epochs": 1,
                                                         "train.max_steps": 1, "data.limit_train": 50,
                                                         "data.limit_val": 20, "train.precision": "bf16"})
    monkeypatch.setattr(ClassifyTask, "finish", lambda self, ctx, rows: None)
    trainer = Trainer(ClassifyTask(cfg), cfg, tmp_path / "run")
    trainer.fit()
    assert trainer.ctx.numerics.precision == "bf16" and deepest[0] == 1


def test_import_dlcv_imports_no_torch():
    assert_runs_in_a_fresh_python("import sys, dlcv; assert 'torch' not in sys.modules; assert callable(dlcv.load)")


def test_exported_metadata_is_json_per_key(exported):
    import onnx
    props = {p.key: p.value for p in onnx.load(str(exported("p1", "onnx"))).metadata_props}
    assert json.loads(props["classes"]) == [str(c) for c in range(10)] and json.loads(props["task"]) == "classify"


def python_blocks(path):
    """The ```python blocks of a Markdown file, in order."""
    import re
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_documented_python_runs_as_written(exported, tmp_path):
    """docs/usage.md: ONNX Runtime alone on an exported classifier, and the API example (after `dlcv data synth
    synth`)."""
    from dlcv.data.synth import write_tree
    write_tree(tmp_path / "synth", seed=0)
    shutil.copy(exported("p1", "onnx"), tmp_path / "p1.onnx")
    onnx_example, api_example = python_blocks(REPO / "docs" / "usage.md")
    done = [subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
            for code in (onnx_example, api_example)]
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    image = tmp_path / "synth/hw1_data/p1_data/val_50/0_450.png"
    assert done[0].stdout.splitlines() == [dlcv.load(tmp_path / "p1.onnx").predict(image)]
    lines = done[1].stdout.splitlines()
    assert lines[1] == "dlcv.Model('runs/api_demo/checkpoints/best.pt', classify, 10 classes)"
    assert len(lines) == 5 and lines[4] == "(256,)" and lines[2].count("'") == 4
