import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIGURES, REPO, seg_cfg
from dlcv.cli import main
from dlcv.contracts import segment as segment_contracts
from dlcv.data.masks import PALETTE, class_to_rgb, pair_folder, read_mask
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.tasks import segment


def _write_pair(folder, ident, classes, image=None):
    folder.mkdir(parents=True, exist_ok=True)
    image = image if image is not None else np.random.default_rng(0).integers(0, 255, (*classes.shape, 3), np.uint8)
    Image.fromarray(image).save(folder / f"{ident}_sat.jpg")
    Image.fromarray(class_to_rgb(classes)).save(folder / f"{ident}_mask.png")


def test_miou_command_prints_exactly_like_the_official_evaluator(tmp_path, capsys):
    truth = np.array([[0, 0, 0, 1], [1, 6, 6, 2], [3, 4, 5, 5]])
    pred = np.array([[0, 0, 1, 1], [6, 0, 6, 2], [3, 4, 5, 0]])
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    Image.fromarray(class_to_rgb(truth)).save(tmp_path / "gt" / "0000_mask.png")
    off_palette = class_to_rgb(pred).astype(np.int32)
    off_palette = np.where(off_palette == 255, 128, 127).astype(np.uint8)  # just above / below the threshold
    Image.fromarray(off_palette).save(tmp_path / "pred" / "0000_mask.png")
    (tmp_path / "gt" / "0000_sat.jpg").write_bytes(b"ignored: only .png files are read")
    assert main(["segment", "miou", str(tmp_path / "gt"), str(tmp_path / "pred")]) == 0
    expected = [2 / 5, 1 / 3, 1, 1, 1, 1 / 2]
    lines = "".join(f"class #{c} : {v:1.5f}\n" for c, v in enumerate(expected))
    assert capsys.readouterr().out == lines + f"\nmean_iou: {sum(expected) / 6:f}\n"


def test_miou_count_and_size_mismatch(tmp_path):
    for d in ("gt", "pred"):
        (tmp_path / d).mkdir()
    Image.fromarray(class_to_rgb(np.zeros((4, 4), int))).save(tmp_path / "gt" / "a.png")
    with pytest.raises(DlcvError, match="1 masks in .* but 0"):
        segment_contracts.score_folders(tmp_path / "gt", tmp_path / "pred")
    Image.fromarray(class_to_rgb(np.zeros((4, 5), int))).save(tmp_path / "pred" / "a.png")
    with pytest.raises(DlcvError, match="5x4 but .* is 4x4"):
        segment_contracts.score_folders(tmp_path / "gt", tmp_path / "pred")


def test_bad_pairs_and_masks_name_the_file(tmp_path):
    _write_pair(tmp_path / "a", "0000", np.zeros((8, 8), int))
    (tmp_path / "a" / "0001_sat.jpg").write_bytes((tmp_path / "a" / "0000_sat.jpg").read_bytes())
    with pytest.raises(DlcvError, match="0001_sat.jpg has no matching mask"):
        pair_folder(tmp_path / "a")
    _write_pair(tmp_path / "b", "0000", np.zeros((8, 8), int))
    shutil.copy(tmp_path / "b" / "0000_mask.png", tmp_path / "b" / "0002_mask.png")
    with pytest.raises(DlcvError, match="0002_mask.png has no matching satellite image"):
        pair_folder(tmp_path / "b")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "gray_mask.png")
    with pytest.raises(DlcvError, match="gray_mask.png: mode L"):
        read_mask(tmp_path / "gray_mask.png", 6)
    (tmp_path / "broken_mask.png").write_bytes(b"junk")
    with pytest.raises(DlcvError, match="broken_mask.png"):
        read_mask(tmp_path / "broken_mask.png", 6)


def test_red_pixels_are_ignored_in_training_and_unknown_in_scoring(tmp_path):
    rgb = class_to_rgb(np.zeros((2, 2), int))
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    train, n = read_mask(tmp_path / "m.png", 255)
    assert n == 1 and train[0, 0] == 255 and train[1, 1] == 0
    assert read_mask(tmp_path / "m.png", 6)[0][0, 0] == 6


def test_image_and_mask_size_mismatch_is_an_error(tmp_path, synth_root):
    root = tmp_path / "p3"
    _write_pair(root / "train", "0000", np.zeros((8, 8), int))
    _write_pair(root / "validation", "0000", np.zeros((8, 8), int))
    Image.fromarray(class_to_rgb(np.zeros((8, 6), int))).save(root / "train" / "0000_mask.png")
    cfg = seg_cfg(root)
    with pytest.raises(DlcvError, match="0000_mask.png: mask is 6x8, its image 0000_sat.jpg is 8x8"):
        Trainer(segment.SegmentTask(cfg), cfg, tmp_path / "run").fit()


@pytest.mark.cross_path
def test_segmentation_learns_and_predict_scores_like_training(synth_root, tmp_path, monkeypatch):
    p3 = synth_root / "p3_data"
    cfg = seg_cfg(p3, **{"tta.flip": True, "tta.rotate90": True, **FIGURES})  # both paths average the same 8 views
    summary = Trainer(segment.SegmentTask(cfg), cfg, tmp_path / "run").fit()
    run = tmp_path / "run"
    assert summary.best["val_miou"] > 0.5
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "train_loss", "val_loss", "val_miou"] and "iou_water" in header
    assert set(summary.extras["per_class_iou"]) == {"urban", "agriculture", "rangeland", "forest", "water", "barren"}
    for fig in ("mask_grid.png", "per_class_iou.png", "training_curves.png"):
        assert (run / "figures" / fig).stat().st_size > 0
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == \
        ["masks_epoch_001.pt", "masks_epoch_004.pt", "masks_epoch_008.pt"]
    # hw1_3.sh on the validation folder, then the official scoring, must give the in-training mIoU
    out = tmp_path / "pred"
    env = {**os.environ, "DLCV_P3_CKPT": str(run / "checkpoints/last.pt"), "DLCV_PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "hw1_3.sh"), str(p3 / "validation"), str(out)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    sats = sorted(p.name for p in (p3 / "validation").glob("*_sat.jpg"))
    assert sorted(p.name for p in out.iterdir()) == [s.replace("_sat.jpg", "_mask.png") for s in sats]
    mask = np.asarray(Image.open(out / "0013_mask.png"))
    assert mask.shape == (128, 128, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in PALETTE.tolist()}
    # Two code paths (batch sizes, memory layouts, kernels) may flip pixels whose top two logits tie to
    # float precision, so the paths are compared with tolerances, not bit for bit: the final-epoch mask
    # snapshot (the training path) and hw1_3.sh's masks of the same tiles agree on >= 99.9% of pixels, and
    # the mIoU within 1e-3. A real mismatch is far outside both: a missed tile or a wrong pairing of file
    # and prediction moves whole tiles (each is 1/8 of the pixels here) and the mIoU by > 0.05.
    snap = torch.load(run / "snapshots" / "masks_epoch_008.pt", weights_only=True)
    for ident, trained in zip(snap["ids"], snap["masks"]):
        predicted, _ = read_mask(out / f"{ident}_mask.png", 6)
        assert (torch.from_numpy(predicted) == trained).float().mean() >= 0.999, ident
    _, miou = segment_contracts.score_folders(p3 / "validation", out)
    assert miou == pytest.approx(summary.final["val_miou"], abs=1e-3)
    # a batch that mixes tile sizes is predicted tile by tile, each mask at its tile's size
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.open(p3 / "validation/0013_sat.jpg").resize((96, 64)).save(mixed / "0001_sat.jpg")
    shutil.copy(p3 / "validation/0062_sat.jpg", mixed / "0002_sat.jpg")
    assert segment_contracts.predict_folder(run / "checkpoints/last.pt", mixed, tmp_path / "mixed_out", torch.device("cpu"),
                                  batch_size=2) == 2
    assert Image.open(tmp_path / "mixed_out/0001_mask.png").size == (96, 64)
    assert Image.open(tmp_path / "mixed_out/0002_mask.png").size == (128, 128)
    # --compile (torch.compile with weight freezing) predicts the same masks as eager, also when the compile
    # cache was written by a process on other CPU kernels (AVX-512, then avx2: torch's FX graph cache then
    # returned NaN logits, so predict does not use it)
    for name, capability in (("compiled", None), ("compiled_avx2", "avx2")):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        result = subprocess.run([sys.executable, "-m", "dlcv", "segment", "predict", "--ckpt",
                                 str(run / "checkpoints/last.pt"), str(p3 / "validation"), str(tmp_path / name),
                                 "--compile"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        for ident in snap["ids"]:
            eager, _ = read_mask(out / f"{ident}_mask.png", 6)
            compiled, _ = read_mask(tmp_path / name / f"{ident}_mask.png", 6)
            assert (compiled == eager).mean() >= 0.999, (name, ident)
    # and a machine where it cannot build (no C++ compiler) gets one line naming the option
    def broken_compile(model, **kwargs):
        def fail(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(fail, RuntimeError("no working C++ compiler found"), None)
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(DlcvError, match=r"^--compile: torch.compile could not build the model \(no working C\+\+ "
                                        r"compiler found\); run without --compile$"):
        segment_contracts.predict_folder(run / "checkpoints/last.pt", p3 / "validation", tmp_path / "broken",
                                         torch.device("cpu"), compile_model=True)


def test_dice_loss_by_hand():
    logits = torch.zeros(1, 2, 1, 3)  # uniform probabilities 0.5 / 0.5
    target = torch.tensor([[[0, 1, 255]]])  # the ignored pixel counts nowhere
    # class 0: 2 x 0.5 / (1.0 + 1) = 0.5; class 1 the same -> 1 - 0.5
    assert segment.dice_loss(logits, target).item() == pytest.approx(0.5)
    sure = torch.tensor([[[[9.0, -9.0, 0.0]], [[-9.0, 9.0, 0.0]]]])  # confident and right on both pixels
    assert segment.dice_loss(sure, target).item() == pytest.approx(0.0, abs=1e-6)
    only_zero = torch.tensor([[[0, 0, 255]]])  # class 1 absent from the labels: not averaged in
    assert segment.dice_loss(logits, only_zero).item() == pytest.approx(1 - 2 * 1.0 / (1.0 + 2))


def test_lovasz_softmax_by_hand():
    # two pixels, labels 0 and 1, p(class 0) = 0.8 and 0.4; a third pixel ignored
    probs = torch.tensor([[[[0.8, 0.4, 0.5]], [[0.2, 0.6, 0.5]]]])
    target = torch.tensor([[[0, 1, 255]]])
    # class 0: errors 0.2 (fg), 0.4 (bg); sorted 0.4, 0.2 -> Jaccard 1/2, 1 -> weights 1/2, 1/2 -> 0.3
    # class 1: errors 0.2 (bg), 0.4 (fg); sorted 0.4, 0.2 -> Jaccard 1, 1 -> weights 1, 0 -> 0.4
    assert segment.lovasz_softmax(probs.log(), target, stride=1).item() == pytest.approx(0.35)
    sure = torch.tensor([[[[9.0, -9.0, 0.0]], [[-9.0, 9.0, 0.0]]]])
    assert segment.lovasz_softmax(sure, target, stride=1).item() == pytest.approx(0.0, abs=1e-3)
    # the default stride reads every 4th pixel: a 4x4 block of one label scores as its corner pixel
    block = probs.log().repeat_interleave(4, 2).repeat_interleave(4, 3)[..., :8]
    labels = target.repeat_interleave(4, 1).repeat_interleave(4, 2)[..., :8]
    assert segment.lovasz_softmax(block, labels).item() == pytest.approx(0.35)


