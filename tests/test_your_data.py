"""A user's own dataset in each layout (data/layouts.py), on tiny trees made here: train -> predict ->
eval / miou with class names in the outputs; streaming from disk against holding in memory; bad trees; data
roots whose names YAML would misread."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import TINY_SSL, kill_after_epoch, small_classify_cfg
from dlcv.cli import main

CLASSES = ("café au lait", "dog house", "ñandú")  # spaces and non-ASCII letters
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def image(colour, rng, size=16) -> Image.Image:
    noise = rng.integers(-40, 40, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def image_folder_tree(root: Path, per_class=(8, 4)) -> Path:
    """ROOT/{train,val}/<class>/ with a nested sub-folder, a stray text file and a hidden folder."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for name, colour in zip(CLASSES, COLOURS):
            for i in range(count):
                folder = root / split / name / ("nested" if i % 2 else "")
                folder.mkdir(parents=True, exist_ok=True)
                image(colour, rng).save(folder / f"{i:03d} x.png")
    (root / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


def write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return str(path)


def classify_recipe(root: Path, **data) -> dict:
    return {"task": "classify", "device": "cpu", "data": {"root": str(root), "image_size": 16, **data},
            "model": {"name": "cifar_convnet", "options": {"widths": [8, 16, 16]}},
            "optim": {"name": "adam", "lr": 0.01}, "snapshot": {"epochs": [3]},
            "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 16, "precision": "fp32", "seed": 0,
                      "channels_last": False}}


def test_an_image_folder_tree_trains_predicts_and_scores_with_its_class_names(tmp_path, capsys, monkeypatch):
    root = image_folder_tree(tmp_path / "my data")
    assert main(["data", "check", str(root)]) == 0
    check = capsys.readouterr().out.splitlines()
    assert check[0] == f"{root}: classify, layout folders (a dataset of your own)"
    assert f"train: {root / 'train'}, 24 images" in check and f"  {CLASSES[2]}: 8" in check
    assert f"skipped: {root / 'train' / CLASSES[0] / 'notes.txt'}: not an image (.txt)" in check
    assert f"skipped: {root / 'train' / '.ipynb_checkpoints'}: hidden folder, not read" in check
    assert "image sizes: 16x16: 36" in check

    run = tmp_path / "run"
    assert main(["classify", "train", "-c", write_recipe(tmp_path / "r.yaml", classify_recipe(root)),
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["inputs"]["layout"] == "folders" and summary["inputs"]["problem"] is None
    assert list(summary["per_class_acc"]) == list(CLASSES) and summary["inputs"]["classes"] == list(CLASSES)
    assert (run / "figures" / "confusion_matrix.png").is_file()
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["classes"] == list(CLASSES)

    pred = tmp_path / "pred.csv"
    assert main(["classify", "predict", "--ckpt", str(run / "checkpoints" / "best.pt"), str(root / "val"),
                 str(pred)]) == 0
    rows = pred.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "filename,label" and len(rows) == 13
    assert rows[7] == f"{CLASSES[1]}/nested/001 x.png,{rows[7].rsplit(',', 1)[1]}"  # sub-folders kept, by path
    assert {r.rsplit(",", 1)[1] for r in rows[1:]} <= set(CLASSES)
    from dlcv.viz import figures
    drawn = []
    monkeypatch.setattr(figures, "scatter_by_class", lambda *args: drawn.append(args))
    assert main(["classify", "embed", "--ckpt", str(run / "checkpoints" / "best.pt"), str(root / "val"),
                 "--out", str(tmp_path / "pca.png")]) == 0
    (points, colours, title, _, classes), = drawn
    assert "coloured by true class" in title and classes == list(CLASSES)  # the folders' labels, by name
    assert list(colours) == [0] * 4 + [1] * 4 + [2] * 4 and len(points) == 12
    capsys.readouterr()
    assert main(["eval", "acc", str(root / "val"), str(pred)]) == 0  # the folder is the ground truth
    accuracy = float(capsys.readouterr().out.split()[1])
    assert accuracy == pytest.approx(summary["best"]["val_acc"], abs=1e-4) and accuracy > 0.6  # learned colours


def test_a_csv_of_string_labels_beside_its_folder_holds_out_validation_and_predicts_names(tmp_path, capsys):
    root = tmp_path / "csvdata"
    (root / "train" / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = ["filename,label"]
    for i in range(30):
        name = f"imgs/{i}.png"
        image(COLOURS[i % 3], rng).save(root / "train" / name)
        rows.append(f"{name},{['cat', 'dog', 'emu'][i % 3]}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["classify", "train", "-c", write_recipe(tmp_path / "r.yaml", classify_recipe(root)),
                 "--set", "data.val_fraction=0.2", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["inputs"]["layout"] == "csv" and summary["inputs"]["problem"] == "p2"
    assert summary["inputs"]["train_samples"] == 24 and list(summary["per_class_acc"]) == ["cat", "dog", "emu"]
    pred = tmp_path / "pred.csv"
    assert main(["classify", "predict", "--ckpt", str(run / "checkpoints" / "last.pt"), str(root / "train"),
                 str(pred)]) == 0
    assert {r.split(",")[1] for r in pred.read_text().splitlines()[1:]} <= {"cat", "dog", "emu"}


SEG_CLASSES = ("sky blue", "grass", "árbol")
SEG_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))
IGNORE_COLOUR = (255, 255, 255)


def pairs_tree(root: Path, kind: str, size: int = 32) -> Path:
    """ROOT/{train,val}/images/NAME.png + masks/NAME.png, 3 classes in vertical bands; a corner of no class.
    `index`: grayscale masks (val: palette PNGs), no classes.csv; `rgb`: RGB masks + classes.csv with an
    ignore row."""
    rng = np.random.default_rng(2)
    for split, count in (("train", 8), ("val", 4)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            edges = np.sort(rng.integers(4, size - 4, 2))
            classes = np.digitize(np.arange(size), edges)[None].repeat(size, 0).astype(np.uint8)
            img = np.array(COLOURS)[classes] + rng.integers(-30, 30, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / "images" / f"tile {i}.png")
            ignored = np.zeros((size, size), bool)
            ignored[:3, :3] = True
            if kind == "index":
                mask = Image.fromarray(np.where(ignored, 255, classes).astype(np.uint8))
                mask = mask.convert("P") if split == "val" else mask
            else:
                mask = Image.fromarray(np.where(ignored[..., None], IGNORE_COLOUR, np.array(SEG_COLOURS)[classes])
                                       .astype(np.uint8))
            mask.save(root / split / "masks" / f"tile {i}.png")
    if kind == "rgb":
        lines = ["name,r,g,b", *(f"{n},{r},{g},{b}" for n, (r, g, b) in zip(SEG_CLASSES, SEG_COLOURS)),
                 "ignore,255,255,255"]
        (root / "classes.csv").write_text("\n".join(lines) + "\n")
    return root


def segment_recipe(root: Path) -> dict:
    return {"task": "segment", "device": "cpu", "data": {"root": str(root)},
            "model": {"name": "fcn_small", "options": {"width": 8}}, "optim": {"name": "adam", "lr": 0.01},
            "augment": {"flip": True}, "snapshot": {"images": ["tile 0"]},
            "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 4, "precision": "fp32", "seed": 0,
                      "channels_last": False}}


@pytest.mark.parametrize("kind", ["index", "rgb"])
def test_image_mask_pairs_train_predict_and_score_with_their_own_classes(kind, tmp_path, capsys):
    root = pairs_tree(tmp_path / "seg", kind)
    names = list(SEG_CLASSES) if kind == "rgb" else ["0", "1", "2"]
    run, out = tmp_path / "run", tmp_path / "pred"
    assert main(["segment", "train", "-c", write_recipe(tmp_path / "r.yaml", segment_recipe(root)),
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["inputs"]["layout"] == "pairs" and list(summary["per_class_iou"]) == names
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["classes"] == names and state["model"]["classifier.weight"].shape[0] == 3
    assert (run / "figures" / "mask_grid.png").is_file()

    assert main(["segment", "predict", "--ckpt", str(run / "checkpoints" / "last.pt"), str(root / "val" / "images"),
                 str(out)]) == 0
    predicted = sorted(out.iterdir())
    assert [p.name for p in predicted] == [f"tile {i}.png" for i in range(4)]
    with Image.open(predicted[0]) as im:
        assert im.mode == ("RGB" if kind == "rgb" else "L") and im.size == (32, 32)
        values = np.asarray(im).reshape(-1, 3 if kind == "rgb" else 1)
    allowed = {tuple(c) for c in SEG_COLOURS} if kind == "rgb" else {(0,), (1,), (2,)}
    assert {tuple(v) for v in values} <= allowed
    capsys.readouterr()
    assert main(["segment", "miou", str(root / "val" / "masks"), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in printed[:3]] == names
    # predict + miou score exactly what the run's last validation did (the same model, tiles, ignore rule)
    assert float(printed[-1].split()[1]) == pytest.approx(summary["final"]["val_miou"], abs=1e-6)


def test_byol_reads_a_nested_folder_and_monitors_on_an_image_folder(tmp_path):
    root = tmp_path / "photos"
    rng = np.random.default_rng(3)
    for i in range(40):
        folder = root / "unlabeled" / f"trip {i % 3}" / ("day 2" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image(COLOURS[i % 3], rng, 32).save(folder / f"{i}.jpg")
    image_folder_tree(root / "labelled", per_class=(4, 2))
    from dlcv import config
    sets = [a for k, v in TINY_SSL.items() for a in ("--set", config.set_item(k, v))]
    recipe = config.load_yaml("p2_byol")
    recipe["data"] = {"root": str(root), "unlabeled_dir": "unlabeled"}
    recipe["knn"] = {"train_dir": "labelled/train", "train_csv": None, "val_dir": "labelled/val", "val_csv": None}
    run = tmp_path / "run"
    assert main(["ssl", "pretrain", "-c", write_recipe(tmp_path / "r.yaml", recipe), *sets, "--set", "train.epochs=1",
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["inputs"] == {**summary["inputs"], "train_samples": 40, "layout": "folder", "problem": "p2"}
    assert 0 <= summary["final"]["knn_acc"] <= 1 and (run / "backbone.pt").is_file()


# -- streaming ---------------------------------------------------------------------------------------------

def test_a_streamed_split_hands_over_the_planned_batches_byte_for_byte(p1_root):
    from dlcv.data.images import list_images
    from dlcv.data.sources import Images, Source
    files = list_images(p1_root / "train_50")[:40]
    held = Source(Images(files, 24), torch.device("cpu"), in_memory=True)
    streamed = Source(Images(files, 24), torch.device("cpu"), in_memory=False, workers=2)
    plan = list(torch.randperm(40, generator=torch.Generator().manual_seed(0)).split(8))
    streamed.plan(plan)
    for indices in plan:
        assert torch.equal(streamed.batch(indices), held.batch(indices))
    odd = torch.tensor([3, 1, 4])  # not planned: decoded on the spot
    assert torch.equal(streamed.batch(odd), held[odd]) and held[odd].dtype == torch.uint8


def train(cfg, run, resume=False):
    from dlcv.engine.trainer import Trainer
    from dlcv.tasks.classify import ClassifyTask
    return Trainer(ClassifyTask(cfg), cfg, run, resume=resume).fit()


def test_streaming_trains_the_weights_memory_does_and_a_killed_streaming_run_resumes_exactly(p1_root, tmp_path,
                                                                                                monkeypatch):
    sets = {"data.limit_train": 200, "data.limit_val": 50, "train.batch_size": 50, "snapshot.epochs": [9]}  # none
    weights = {}
    for mode in (True, False):
        cfg = small_classify_cfg(p1_root, **sets, **{"data.in_memory": mode, "data.workers": 1})
        train(cfg, tmp_path / str(mode))
        weights[mode] = torch.load(tmp_path / str(mode) / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in weights[True].items():
        assert torch.allclose(value.float(), weights[False][key].float(), atol=1e-6), key
    cfg = small_classify_cfg(p1_root, **sets, **{"data.in_memory": False, "data.workers": 1})
    revive = kill_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed")
    revive()
    train(cfg, tmp_path / "killed", resume=True)
    resumed = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], weights[False][k]) for k in resumed)


def test_auto_streams_a_split_that_does_not_fit_and_says_so(p1_root, monkeypatch, caplog):
    from dlcv.data import sources
    from dlcv.data.images import list_images
    monkeypatch.setattr(sources, "fits_in_memory", lambda nbytes: False)
    source = sources.Source(sources.Images(list_images(p1_root / "val_50")[:10], 32), torch.device("cpu"),
                            in_memory="auto", what="training set X")
    assert not source.in_memory and source.tensors is None
    assert "training set X: 10 items, 0.0 GiB decoded, do not fit in memory; streaming them from disk" in caplog.text


# -- bad trees: one line naming the file or class, exit code 2, nothing written -------------------------------

def _break_classify(root: Path, how: str) -> None:
    if how == "empty class folder":
        (root / "train" / "zebra").mkdir()
    elif how == "class folder without images":
        (root / "train" / "zebra").mkdir()
        (root / "train" / "zebra" / "readme.md").write_text("x")
    elif how == "val class unknown to train":
        shutil.copytree(root / "val" / CLASSES[0], root / "val" / "bird")


def _break_segment(root: Path, how: str) -> None:
    mask = root / "train" / "masks" / "tile 2.png"
    if how == "mask of another size":
        Image.open(mask).resize((16, 16)).save(mask)
    elif how == "mask value outside the classes":
        values = np.asarray(Image.open(mask)).copy()
        values[10, 10] = 7
        Image.fromarray(values).save(mask)
    elif how == "repeated colour in classes.csv":
        with open(root / "classes.csv", "a") as fh:
            fh.write("weeds,0,255,0\n")


BAD_TREES = [
    ("classify", "empty class folder", "train/zebra: class folder without images (empty)"),
    ("classify", "class folder without images", "train/zebra: class folder without images (e.g. "),
    ("classify", "val class unknown to train", "val: label(s) ['bird'] not among the 3 training classes"),
    ("index", "mask of another size", "masks/tile 2.png is 16x16, its image tile 2.png is 32x32"),
    ("index", "mask value outside the classes", "masks/tile 2.png: value 7 is not a class (the classes are 0..2"),
    ("rgb", "repeated colour in classes.csv", "classes.csv, line 6: colour (0, 255, 0) repeats line 3"),
]


@pytest.mark.parametrize("kind,how,message", BAD_TREES, ids=[b[1] for b in BAD_TREES])
def test_a_bad_tree_is_one_line_exit_2_and_nothing_written(kind, how, message, tmp_path, capsys):
    if kind == "classify":
        root = image_folder_tree(tmp_path / "data", per_class=(2, 1))
        _break_classify(root, how)
        recipe, command = classify_recipe(root), "classify"
    else:
        root = pairs_tree(tmp_path / "data", kind)
        _break_segment(root, how)
        recipe, command = segment_recipe(root), "segment"
    if how == "mask value outside the classes":  # with classes.csv naming 3 classes
        (root / "classes.csv").write_text("name,r,g,b\na,0,0,1\nb,0,0,2\nc,0,0,3\n")
    run = tmp_path / "run"
    assert main([command, "train", "-c", write_recipe(tmp_path / "r.yaml", recipe), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not run.exists()
    assert main(["data", "check", str(root)]) == 2 and message in capsys.readouterr().err


# -- data roots YAML would misread ---------------------------------------------------------------------------

HOSTILE = "hw1 #2: a"  # YAML text would cut it at the comment, or read a mapping


def test_the_gpu_kit_gives_paths_as_values_whatever_their_name(tmp_path):
    import sys
    from dlcv import config
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "gpu"))
    import kit
    data = tmp_path / HOSTILE / "hw1_data"
    for problem in ("p1", "p2", "p3"):
        for step in kit.steps(problem, data, tmp_path / HOSTILE, tiny=True):
            cmd = [str(c) for c in step["cmd"]]
            values = {".".join(key): value for key, value in (config.parse_override(cmd[i + 1])
                                                              for i, c in enumerate(cmd) if c == "--set")
                      if key[-1] in ("root", "weights")}
            for key, value in values.items():
                assert Path(value).is_relative_to(tmp_path / HOSTILE), (key, value)


def test_the_demo_merges_its_data_root_into_the_config(synth_root, tmp_path, monkeypatch):
    from dlcv.pipelines import demo
    seen = []

    def fit(task, cfg, run_dir):
        seen.append(cfg["data"]["root"])
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "fit_or_reuse", fit)
    data = tmp_path / HOSTILE
    shutil.copytree(synth_root, data)
    assert main(["demo", "--out", str(tmp_path / "out"), "--data", str(data), "--device", "cpu"]) == 130
    assert seen == [str(data / "p1_data")]
