"""No data loss, no code run from files, no reads outside the folder the user named, bounded memory on
hostile images. Every case goes through the real command line."""
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from PIL import Image

from conftest import REPO, seg_cfg, small_classify_cfg
from dlcv.cli import main
from dlcv.engine import checkpoint
from dlcv.engine.trainer import Trainer
from dlcv.tasks.classify import ClassifyTask
from dlcv.tasks.segment import SegmentTask


def dlcv(*args, env=None, script=None):
    command = ["bash", str(REPO / script)] if script else [sys.executable, "-m", "dlcv"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def run(p1_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    cfg = small_classify_cfg(p1_root, **{"train.epochs": 1})
    Trainer(ClassifyTask(cfg), cfg, out).fit()
    return out


@pytest.fixture(scope="module")
def seg_ckpt(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety_seg") / "run"
    cfg = seg_cfg(synth_root / "p3_data", **{"train.epochs": 1, "data.limit_train": 4, "data.limit_val": 3})
    Trainer(SegmentTask(cfg), cfg, out).fit()
    return out / "checkpoints" / "best.pt"


# -- 4. no data loss ------------------------------------------------------------------------------------

def test_data_synth_refuses_a_tree_that_holds_files_unless_forced(tmp_path, capsys):
    real = tmp_path / "hw1_data" / "p1_data"
    real.mkdir(parents=True)
    (real / "val_gt.csv").write_text("filename,label\n0_1.png,0\n")
    assert main(["data", "synth", str(tmp_path)]) == 2
    assert f"{tmp_path / 'hw1_data'} already holds files" in capsys.readouterr().err
    assert (real / "val_gt.csv").read_text() == "filename,label\n0_1.png,0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hw1_data"]  # no half tree, no temp folder
    assert main(["data", "synth", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "hw1_data" / "p3_data" / "validation").is_dir()
    assert (real / "val_gt.csv").read_text() != "filename,label\n0_1.png,0\n"


@pytest.mark.parametrize("target", ["same", "same_via_dotdot", "other_with_ground_truth"])
def test_hw1_3_never_overwrites_ground_truth_masks(target, seg_ckpt, synth_root, tmp_path):
    val = tmp_path / "validation"
    shutil.copytree(synth_root / "p3_data" / "validation", val)
    out = {"same": val, "same_via_dotdot": val / ".." / "validation", "other_with_ground_truth": tmp_path / "other"}[target]
    if target == "other_with_ground_truth":
        out.mkdir()
        shutil.copy(val / "0013_sat.jpg", out)
        shutil.copy(val / "0013_mask.png", out)
    before = {p.name: p.read_bytes() for p in val.glob("*_mask.png")}
    r = dlcv(val, out, env={"DLCV_P3_CKPT": str(seg_ckpt)}, script="hw1_3.sh")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "overwrite" in r.stderr and "pick another output folder" in r.stderr
    assert {p.name: p.read_bytes() for p in val.glob("*_mask.png")} == before


# -- 5. no code runs from a file ------------------------------------------------------------------------

class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_without_running_anything(run, p1_root, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**state, "classes": RunsACommand(marker)}, tmp_path / "evil.pt")
    r = dlcv(p1_root / "val_50", tmp_path / "o.csv", env={"DLCV_P1_CKPT": str(tmp_path / "evil.pt")},
             script="hw1_1.sh")
    assert r.returncode == 2 and "refused" in r.stderr and "evil.pt" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "o.csv").exists()


def test_every_file_a_run_writes_loads_with_weights_only(run):
    files = sorted(run.rglob("*.pt"))
    assert {"last.pt", "best.pt", "features_epoch_001.pt"} <= {f.name for f in files}
    for f in files:
        state = torch.load(f, weights_only=True)
        assert state["format_version"] == checkpoint.FORMAT_VERSION
    assert isinstance(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["rng"][0]["numpy"]["keys"],
                      torch.Tensor)


def test_files_of_the_wrong_kind_are_refused_by_name(run, tmp_path):
    snap = run / "snapshots" / "features_epoch_001.pt"
    r = dlcv("classify", "predict", "--ckpt", snap, tmp_path, tmp_path / "o.csv")
    assert r.returncode == 2 and f"{snap} is a dlcv snapshot file, not a checkpoint" in r.stderr
    hand_made = tmp_path / "hand.pt"
    torch.save({"format_version": 2, "model": {}, "task": "classify"}, hand_made)
    r = dlcv("classify", "predict", "--ckpt", hand_made, tmp_path, tmp_path / "o.csv")
    assert r.returncode == 2 and "not a complete dlcv checkpoint: missing config, epoch, step, classes" in r.stderr
    newer = tmp_path / "newer.pt"
    torch.save({**torch.load(run / "checkpoints" / "best.pt", weights_only=True), "format_version": 99}, newer)
    r = dlcv("classify", "predict", "--ckpt", newer, tmp_path, tmp_path / "o.csv")
    assert r.returncode == 2 and "format_version 99, newer than this dlcv reads (up to 2)" in r.stderr
    assert "Traceback" not in r.stderr


# -- 6. no reads outside the named folder ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../secret.png", "{abs}", "sub/../../secret.png", ""])
def test_csv_file_names_must_stay_inside_the_image_folder(name, run, p1_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(p1_root / "val_50" / "0_450.png", images / "0000.png")
    shutil.copy(p1_root / "val_50" / "1_450.png", tmp_path / "secret.png")  # a readable image outside
    name = name.format(abs=tmp_path / "secret.png")
    (tmp_path / "in.csv").write_text(f"id,filename,label\n0,0000.png,None\n1,{name},None\n")
    r = dlcv(tmp_path / "in.csv", images, tmp_path / "out.csv", env={"DLCV_P2_CKPT": str(run / "checkpoints/best.pt")},
             script="hw1_2.sh")
    assert r.returncode == 2 and f"{tmp_path / 'in.csv'}, line 3: file name {name!r}" in r.stderr, r.stderr
    assert not (tmp_path / "out.csv").exists()


def test_training_csv_names_outside_the_folder_are_refused(p1_root, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train.csv").write_text("filename,label\n/etc/hostname,0\n")
    r = dlcv("classify", "train", "-c", "p1_fast", "--set", f"data.root={tmp_path}", "--set", "data.train_dir=train",
             "--set", "data.train_csv=train.csv", "--out", tmp_path / "run")
    assert r.returncode == 2 and "line 2: file name '/etc/hostname' is outside the image folder" in r.stderr


# -- 7. bounded memory on hostile images ----------------------------------------------------------------

def png_declaring(width, height):
    """A ~100-byte PNG whose header declares width x height pixels (its data is a stub)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_with_its_declared_size(run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bomb.png").write_bytes(png_declaring(20000, 20000))
    r = dlcv("classify", "predict", "--ckpt", run / "checkpoints/best.pt", images, tmp_path / "o.csv")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "bomb.png" in r.stderr and "DLCV_MAX_IMAGE_PIXELS" in r.stderr and "400000000" in r.stderr.replace(",", "")


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    from dlcv.data.images import read_rgb
    from dlcv.errors import DlcvError
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png").shape == (10, 20, 3)
    monkeypatch.setenv("DLCV_MAX_IMAGE_PIXELS", "199")
    with pytest.raises(DlcvError, match=r"a.png: declares 20x10 pixels, over the limit of 199"):
        read_rgb(tmp_path / "a.png")
    monkeypatch.setenv("DLCV_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DlcvError, match="DLCV_MAX_IMAGE_PIXELS must be a positive whole number"):
        read_rgb(tmp_path / "a.png")
