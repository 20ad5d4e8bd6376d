"""Bad input through the real command line (`dlcv.cli.main`, in process): exit code 2, one line naming the
key / file / row and what is wrong, no traceback, no partial output. Each row: (case, argv, expected
fragment of the message); `{...}` fields are filled from the fixtures below."""
import os
import shutil

import pytest
from PIL import Image

from conftest import small_classify_cfg
from dlcv.cli import main
from dlcv.engine.trainer import Trainer
from dlcv.tasks.classify import ClassifyTask

TRAIN = ["classify", "train", "-c", "p1_fast", "--set", "data.root={p1}", "--out", "{tmp}/run"]
SEG_TRAIN = ["segment", "train", "-c", "p3_lite0", "--set", "data.root={p3}", "--out", "{tmp}/run"]
PREDICT = ["classify", "predict", "--ckpt", "{ckpt}", "{p1}/val_50"]

CASES = [
    # values refused when the config is resolved, naming the key and the valid range
    ("epochs 0", TRAIN + ["--set", "train.epochs=0"], "'train.epochs': invalid value 0; expected a whole number >= 1"),
    ("max_steps 0", TRAIN + ["--set", "train.max_steps=0"], "'train.max_steps': invalid value 0"),
    ("batch 0", TRAIN + ["--set", "train.batch_size=0"], "'train.batch_size': invalid value 0"),
    ("batch -4", TRAIN + ["--set", "train.batch_size=-4"], "'train.batch_size': invalid value -4"),
    ("eval batch 0", TRAIN + ["--set", "train.eval_batch_size=0"], "'train.eval_batch_size': invalid value 0"),
    ("lr < 0", TRAIN + ["--set", "optim.lr=-0.1"], "'optim.lr': invalid value -0.1; expected a number >= 0"),
    ("wd < 0", TRAIN + ["--set", "optim.weight_decay=-1"], "'optim.weight_decay': invalid value -1"),
    ("image size 0", TRAIN + ["--set", "data.image_size=0"], "'data.image_size': invalid value 0"),
    ("smoothing 1", TRAIN + ["--set", "loss.label_smoothing=1.0"], "'loss.label_smoothing': invalid value 1.0; expected a number in [0, 1)"),
    ("padding < 0", TRAIN + ["--set", "augment.crop_padding=-2"], "'augment.crop_padding': invalid value -2"),
    ("mean of 2", TRAIN + ["--set", "data.mean=[0.5, 0.5]"], "'data.mean': invalid value [0.5, 0.5]; expected 3 numbers"),
    ("std of 0", TRAIN + ["--set", "data.std=[0.2, 0, 0.2]"], "'data.std': invalid value [0.2, 0, 0.2]; expected 3 numbers > 0"),
    ("crop scale min > max", TRAIN + ["--set", "augment.resized_crop_scale=[0.9, 0.1]"],
     "'augment.resized_crop_scale': invalid value [0.9, 0.1]; expected [min, max] with 0 < min <= max <= 1"),
    ("seg scale 0", SEG_TRAIN + ["--set", "augment.scale=[0, 1]"], "'augment.scale': invalid value [0, 1]"),
    ("seg balanced 2", SEG_TRAIN + ["--set", "augment.balanced=2"], "'augment.balanced': invalid value 2"),
    ("seg tta scale 0", SEG_TRAIN + ["--set", "tta.scales=[1, 0]"], "'tta.scales': invalid value [1, 0]"),
    # values checked against the model once it is built (the run folder made for it is removed again)
    ("lr_mult of no parameter", SEG_TRAIN + ["--set", "optim.lr_mult.backbone=0.1"],
     "'optim.lr_mult.backbone': no trainable parameter is named backbone.*; top-level names: ['classifier', 'encoder'"),
    ("lr_mult < 0", SEG_TRAIN + ["--set", "optim.lr_mult.encoder=-1"], "'optim.lr_mult.encoder': expected a number >= 0"),
    ("tta translate < 0", TRAIN + ["--set", "tta.translate=-1"], "'tta.translate': invalid value -1"),
    # files and paths
    ("out csv is a folder", PREDICT + ["{tmp}"], "OUT_CSV {tmp} is an existing folder"),
    ("out csv under a file", PREDICT + ["{tmp}/a_file/x.csv"], "{tmp}/a_file is a file, not a folder"),
    ("out csv empty", PREDICT + [""], "OUT_CSV: an empty path"),
    ("report out is a folder", ["report", "{tmp}", "--out", "{tmp}"], "--out {tmp} is an existing folder"),
    ("export out under a file", ["ssl", "export", "{ckpt}", "{tmp}/a_file/b.pt"], "{tmp}/a_file is a file"),
    ("synth into a file", ["data", "synth", "{tmp}/a_file"], "data synth OUT_DIR {tmp}/a_file is a file, not a folder"),
    ("demo out is a file", ["demo", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file, not a folder"),
    ("viz arch suffix", ["viz", "arch", "cifar_convnet", "--out", "{tmp}/a.bmp"], "must end in .png, .svg, .pdf"),
    ("embed suffix", ["classify", "embed", "--ckpt", "{ckpt}", "{p1}/val_50", "--out", "{tmp}/e.txt"],
     "must end in .png, .svg, .pdf"),
    ("binary -c", ["classify", "train", "-c", "{tmp}/binary.yaml", "--out", "{tmp}/run"], "binary.yaml: not UTF-8 text"),
    ("csv not utf-8", ["eval", "acc", "{tmp}/latin1.csv", "{tmp}/latin1.csv"], "latin1.csv: not UTF-8 text"),
    ("dangling symlink", PREDICT[:-1] + ["{tmp}/linked", "{tmp}/o.csv"], "dangling.png is a broken symbolic link"),
    ("empty training label", TRAIN + ["--set", "data.train_dir=.", "--set", "data.train_csv={tmp}/empty_label.csv"],
     "empty_label.csv, line 3: empty label for '0_1.png'"),
    # runs, checkpoints, reports
    ("recipe of another task", ["classify", "train", "-c", "p3_lite0", "--out", "{tmp}/run"],
     "p3_lite0 is a segment recipe: use dlcv segment train"),
    ("resume with another architecture", ["classify", "train", "--out", "{run}", "--resume", "--set",
                                          "model.options={{widths: [8, 8, 8]}}", "--set", "train.epochs=3"],
     "was made with other settings (model.options.widths [8, 16, 16] -> [8, 8, 8]); a resumed run keeps them"),
    ("resume with other parameter groups", ["classify", "train", "--out", "{run}", "--resume", "--set",
                                            "optim.decay_norm_and_bias=false", "--set", "train.epochs=3"],
     "was made with other settings (optim.decay_norm_and_bias True -> False)"),
    ("report: empty summary", ["report", "{tmp}/broken_run", "--out", "{tmp}/r.html"], "summary.json: not a dlcv summary"),
    ("report: malformed metrics", ["report", "{tmp}/bad_metrics_run", "--out", "{tmp}/r.html"], "metrics.csv: malformed"),
    ("embed on too few images", ["classify", "embed", "--ckpt", "{ckpt}", "{tmp}/two_images", "--out", "{tmp}/e.png"],
     "2 image(s); a PCA picture needs at least 5"),
]

ARGPARSE_CASES = [  # argparse's own one-line usage errors (exit 2)
    ("predict batch 0", PREDICT + ["{tmp}/o.csv", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    ("segment predict batch -1", ["segment", "predict", "--ckpt", "{ckpt}", "{p1}", "{tmp}/m", "--batch-size", "-1"],
     "--batch-size: must be >= 1, got -1"),
    ("viz arch input size", ["viz", "arch", "cifar_convnet", "--out", "{tmp}/a.png", "--input-size", "-3"],
     "--input-size: must be >= 1, got -3"),
    ("viz arch non-numeric", ["viz", "arch", "cifar_convnet", "--out", "{tmp}/a.png", "--num-classes", "ten"],
     "--num-classes: expected a whole number, got 'ten'"),
    ("synth seed -1", ["data", "synth", "{tmp}/s", "--seed", "-1"], "--seed: must be >= 0, got -1"),
    ("predict batch 10**20", PREDICT + ["{tmp}/o.csv", "--batch-size", str(10 ** 20)],
     f"--batch-size: must be <= {2 ** 63 - 1}, got {10 ** 20}"),
    ("viz arch input size 100000", ["viz", "arch", "cifar_convnet", "--out", "{tmp}/a.png", "--input-size", "100000"],
     "--input-size: must be <= 2048, got 100000"),
    ("viz arch 10**20 classes", ["viz", "arch", "cifar_convnet", "--out", "{tmp}/a.png", "--num-classes",
                                 str(10 ** 20)], f"--num-classes: must be <= {2 ** 63 - 1}, got {10 ** 20}"),
]


@pytest.fixture(scope="module")
def run(p1_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_input") / "run"
    cfg = small_classify_cfg(p1_root, **{"train.epochs": 1, "model.options": "{widths: [8, 16, 16]}",
                                         "data.limit_train": 100})
    Trainer(ClassifyTask(cfg), cfg, out).fit()
    return out


@pytest.fixture
def fields(run, synth_root, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "latin1.csv").write_bytes("filename,label\ncaf\xe9.png,1\n".encode("latin-1"))
    (tmp_path / "linked").mkdir()
    shutil.copy(synth_root / "p1_data/val_50/0_450.png", tmp_path / "linked" / "0_1.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "linked" / "dangling.png")
    (tmp_path / "two_images").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32)).save(tmp_path / "two_images" / f"{i}.png")
    shutil.copy(synth_root / "p1_data/val_50/0_450.png", tmp_path / "0_1.png")
    (tmp_path / "empty_label.csv").write_text("filename,label\n0_1.png,0\n0_1.png,\n")
    for name, summary, metrics in (("broken_run", "{}", None), ("bad_metrics_run", None, "epoch,val_acc\nfirst,0.5\n")):
        shutil.copytree(run, tmp_path / name, ignore=shutil.ignore_patterns(".lock"))
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(summary)
        if metrics is not None:
            (tmp_path / name / "metrics.csv").write_text(metrics)
    resumable = tmp_path / "resumable"
    shutil.copytree(run, resumable, ignore=shutil.ignore_patterns(".lock"))
    return {"p1": synth_root / "p1_data", "p3": synth_root / "p3_data", "ckpt": run / "checkpoints" / "last.pt",
            "run": resumable, "tmp": tmp_path}


def listing(folder):
    """Every file and folder (a run folder's .lock file stays by design: it holds no data)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".lock")


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(case, argv, expected, fields, capsys):
    before = listing(fields["tmp"])
    code = main([a.format(**fields) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (case, out, err)
    assert expected.format(**fields) in err and "Traceback" not in out + err, err
    assert err.count("dlcv: error:") == 1
    assert listing(fields["tmp"]) == before  # nothing half-done left behind


@pytest.mark.parametrize("case,argv,expected", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_bad_arguments_are_usage_errors(case, argv, expected, fields, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(**fields) for a in argv])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err


def test_ctrl_c_in_train_exits_130_with_the_resume_command(fields, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "fit", interrupted)
    code = main([a.format(**fields) for a in TRAIN])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert f"dlcv: interrupted; continue with: dlcv classify train --out {fields['tmp']}/run --resume" in err


def test_snapshot_epochs_outside_the_run_are_dropped_with_a_warning(p1_root, tmp_path, caplog):
    cfg = small_classify_cfg(p1_root, **{"train.epochs": 1, "train.max_steps": 1, "snapshot.epochs": [0, 1, 7]})
    Trainer(ClassifyTask(cfg), cfg, tmp_path / "run").fit()
    assert "snapshot.epochs [0, 7] outside 1..1 (train.epochs) are dropped" in caplog.text
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == ["features_epoch_001.pt"]


def test_labels_0_and_00_are_one_class_and_conflicting_duplicates_are_named(tmp_path, caplog):
    from dlcv.data.labels import read_labelled_csv
    (tmp_path / "l.csv").write_text("filename,label\na.png,0\nb.png,00\nc.png,+1\na.png,2\n")
    names, labels = read_labelled_csv(tmp_path / "l.csv")
    assert labels == ["0", "0", "1", "2"]
    assert "line 5: a.png is listed again with label 2 (first: 0)" in caplog.text


def test_knn_val_class_absent_from_train_warns_and_scores_it_wrong(caplog):
    from dlcv.data.labels import encode
    assert encode(["a", "z"], ["a", "b"], "k-NN val set", unknown_as=-1) == [0, -1]
    assert "k-NN val set: label(s) ['z'] not among the 2 training classes" in caplog.text


def test_p3_reads_upper_case_and_jpeg_suffixes_and_skips_folders(tmp_path):
    from dlcv.data.masks import mask_name, pair_folder, sat_images
    for name in ("0001_SAT.JPG", "0002_sat.jpeg", "0003_sat.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="JPEG")
        Image.new("RGB", (8, 8)).save(tmp_path / mask_name(tmp_path / name))
    (tmp_path / "0004_sat.jpg").mkdir()  # a folder named like an image
    assert [i for i, _, _ in pair_folder(tmp_path)] == ["0001", "0002", "0003"]
    assert [p.name for p in sat_images(tmp_path)] == ["0001_SAT.JPG", "0002_sat.jpeg", "0003_sat.jpg"]
    assert mask_name(tmp_path / "0001_SAT.JPG") == "0001_mask.png"


def test_a_p1_checkpoint_given_to_hw1_2_warns_naming_its_classes(fields, tmp_path, caplog):
    (tmp_path / "in.csv").write_text("id,filename,label\n0,0_1.png,None\n")
    assert main(["ssl", "predict", "--ckpt", str(fields["ckpt"]), str(tmp_path / "in.csv"), str(fields["tmp"]),
                 str(tmp_path / "out.csv")]) == 0
    assert "was trained on a {label}_{id} image folder (10 classes: 0, 1, 2, ..., 9)" in caplog.text


def test_progress_is_plain_lines_when_not_a_terminal(p1_root, tmp_path, monkeypatch, capsys, caplog):
    from dlcv.engine import trainer
    monkeypatch.setattr(trainer, "PLAIN_PROGRESS_S", 0.0)  # a line at every step
    cfg = small_classify_cfg(p1_root, **{"train.epochs": 1, "train.max_steps": 3})
    Trainer(ClassifyTask(cfg), cfg, tmp_path / "run").fit()
    assert "\r" not in capsys.readouterr().err  # no progress-bar fragments (stderr is not a terminal here)
    assert "epoch 1  step 1/3  loss" in caplog.text and "epoch 1  step 3/3  loss" in caplog.text


def test_an_unreadable_image_folder_is_named(tmp_path, monkeypatch):
    from pathlib import Path

    from dlcv.data.images import list_images
    from dlcv.errors import DlcvError
    real_iterdir = Path.iterdir

    def denied(self):  # the suite runs as root in CI, where chmod cannot take read permission away
        if self == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)
    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(DlcvError, match=f"cannot read folder {tmp_path}: permission denied"):
        list_images(tmp_path)


def test_a_backbone_given_to_setting_a_is_warned_about(fields, monkeypatch, caplog):
    from dlcv.engine.run import Summary
    done = Summary(task="classify", status="finished", monitor="val_acc", best={"val_acc": 0.5, "epoch": 1},
                   final={}, seed=0, wall_time_s=0.0, environment={}, run_dir="")
    monkeypatch.setattr(Trainer, "fit", lambda self: done)
    assert main(["ssl", "finetune", "-c", "p2_finetune", "--setting", "A", "--backbone", "b.pt",
                 "--set", f"data.root={fields['p1']}", "--out", str(fields["tmp"] / "a")]) == 0
    assert "setting A starts from random weights: --backbone b.pt is not used" in caplog.text
