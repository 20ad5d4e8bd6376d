import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv.data import images, labels
from dlcv.data.masks import PALETTE, class_to_rgb, rgb_to_class
from dlcv.data.synth import SynthSizes, write_tree
from dlcv.errors import DlcvError


def test_grayscale_rgba_palette_and_16bit_become_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "p.png")
    Image.fromarray(gray.astype(np.uint16) * 256 + 255).save(tmp_path / "d.png")

    g = images.read_rgb(tmp_path / "g.png")
    assert g.shape == (8, 8, 3) and g.dtype == np.uint8 and (g[..., 1] == gray).all()
    a = images.read_rgb(tmp_path / "a.png")
    assert (a[..., 0] == 200).all() and (a[..., 1] == 0).all()
    assert images.read_rgb(tmp_path / "p.png").shape == (8, 8, 3)
    d = images.read_rgb(tmp_path / "d.png")
    assert (d[..., 0] == gray).all()  # 16-bit scaled down, not clipped to 255


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("bad.png", "cut.jpg"):
        with pytest.raises(DlcvError, match=name):
            images.read_rgb(tmp_path / name)


def test_list_images_errors_on_missing_or_empty_folder(tmp_path):
    with pytest.raises(DlcvError, match="not found"):
        images.list_images(tmp_path / "nope")
    with pytest.raises(DlcvError, match="no .png/.jpg images"):
        images.list_images(tmp_path)


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), i * 50, np.uint8)).save(tmp_path / f"{i}_0.png")
    files = images.list_images(tmp_path)
    cache = tmp_path / "cache"
    first = images.load_images(files, 4, cache)
    assert first.shape == (3, 3, 4, 4) and first[2, 0, 0, 0] == 100
    assert len(list(cache.glob("*.pt"))) == 1
    # A second load must come from the cache: make decoding fail to prove it.
    monkeypatch.setattr(images, "read_rgb", lambda f: (_ for _ in ()).throw(AssertionError("decoded")))
    assert torch.equal(images.load_images(files, 4, cache), first)
    monkeypatch.undo()
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "2_0.png")
    os.utime(tmp_path / "2_0.png", ns=(1, 1))
    assert images.load_images(files, 4, cache)[2, 0, 0, 0] == 7


def test_images_of_other_sizes_are_resized(tmp_path):
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    assert images.load_images([tmp_path / "a.png"], 8, use_cache=False).shape == (1, 3, 8, 8)


def test_folder_labels_and_classes(tmp_path):
    files = [tmp_path / n for n in ("10_3.png", "2_0.png", "2_11.png")]
    assert labels.folder_labels(files) == ["10", "2", "2"]
    assert labels.sorted_classes(["10", "2", "9"]) == ["2", "9", "10"]  # numeric, not "10" < "2"
    assert labels.sorted_classes(["n02", "n01"]) == ["n01", "n02"]
    with pytest.raises(DlcvError, match="0001.png"):
        labels.folder_labels([tmp_path / "0001.png"])
    with pytest.raises(DlcvError, match=r"\['7'\]"):
        labels.encode(["7"], ["1", "2"], "val")


def test_csv_formats_and_missing_column(tmp_path):
    (tmp_path / "a.csv").write_text("filename,label\r\na.png,3\r\nb.png,1\r\n")
    assert labels.read_labelled_csv(tmp_path / "a.csv") == (["a.png", "b.png"], ["3", "1"])
    (tmp_path / "b.csv").write_text("id,filename,label\n0,x.jpg,n0153\n")
    assert labels.read_labelled_csv(tmp_path / "b.csv") == (["x.jpg"], ["n0153"])
    (tmp_path / "c.csv").write_text("id,file,label\n0,x.jpg,1\n")
    with pytest.raises(DlcvError, match=r"c.csv: missing column\(s\) filename"):
        labels.read_labelled_csv(tmp_path / "c.csv")


def test_mask_palette_round_trip_and_threshold():
    classes = np.arange(7).reshape(1, 7)
    assert (rgb_to_class(class_to_rgb(classes)) == classes).all()
    near = np.array([[[127, 128, 255], [128, 128, 0], [255, 0, 0]]], np.uint8)
    # 127 is below the threshold: (0,1,1) = code 3 = urban; (1,1,0) = 6 = agriculture; red = no class
    assert rgb_to_class(near).tolist() == [[0, 1, -1]]
    assert PALETTE[0].tolist() == [0, 255, 255]


def _tree_digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()


def test_synth_tree_layout_and_determinism(tmp_path):
    sizes = SynthSizes(p1_classes=5, p1_train_per_class=2, p1_val_per_class=1, p2_mini_classes=2,
                       p2_mini_per_class=2, p2_office_classes=2, p2_office_train_per_class=2,
                       p2_office_val_per_class=1, p3_train=2, p3_val=1, p3_size=32)
    a, b, c = (write_tree(tmp_path / n, seed=s, sizes=sizes) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert _tree_digest(a) == _tree_digest(b) != _tree_digest(c)
    p1 = a / "p1_data"
    assert sorted(f.name for f in (p1 / "train_50").iterdir())[:2] == ["0_0.png", "0_1.png"]
    assert (p1 / "val_gt.csv").read_text().splitlines()[:2] == ["filename,label", "0_450.png,0"]
    assert Image.open(p1 / "val_50" / "4_450.png").size == (32, 32)
    assert (a / "p2_data/mini/train.csv").read_text().startswith("id,filename,label\n0,n00000000")
    for split in ("train", "val"):
        assert (a / f"p2_data/office/{split}.csv").read_text().startswith("id,filename,label\n0,")
    val = a / "p3_data/validation"
    for i in (13, 62, 104):
        assert (val / f"{i:04d}_sat.jpg").is_file() and (val / f"{i:04d}_mask.png").is_file()
    mask = np.asarray(Image.open(val / "0104_mask.png"))
    assert mask.shape == (32, 32, 3) and (rgb_to_class(mask) >= 0).all()
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in PALETTE.tolist()}
