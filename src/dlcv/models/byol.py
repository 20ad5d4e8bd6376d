"""BYOL (Grill et al. 2020): an online network (backbone, projector, predictor) regresses the projection
of a target network, an exponential moving average of the online backbone and projector."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

# the torchvision ResNets a BYOL backbone (and P2's backbone file) can be; the *_cifar ones (3x3 stride-1 stem,
# model.options.keep_maxpool) keep 32 px inputs from being pooled down to a 1x1 map before the last stage
BACKBONES = ("resnet50", "resnet18", "resnet50_cifar", "resnet18_cifar")


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


def resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision ResNet's pooled features (the input of its fc)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z): the squared distance of the L2-normalised vectors, per sample."""
    return 2 - 2 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)


def target_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: tau = final - (final - base) * (cos(pi * step / total) + 1) / 2."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, projector_hidden: int = 4096, projector_dim: int = 256,
                 separate_views: bool = True):
        super().__init__()
        self.separate_views = separate_views
        # The backbone keeps its (unused) fc so that `backbone.state_dict()` is the plain torchvision
        # format the course's backbone file uses; the fc gets no gradient.
        self.backbone = backbone
        self.backbone.fc.requires_grad_(False)
        feature_dim = backbone.fc.in_features
        self.projector = mlp(feature_dim, projector_hidden, projector_dim)
        self.predictor = mlp(projector_dim, projector_hidden, projector_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Online projection (the representation whose spread detects collapse)."""
        return self.projector(resnet_features(self.backbone, x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """The symmetric BYOL loss of a batch of view pairs (mean over samples, range [0, 8]). Each view goes
        through each network on its own, as the paper, lightly and solo-learn do; `separate_views=False` sends
        both in one batch (one forward instead of two, BatchNorm statistics mixed), as byol-pytorch does."""
        views = [view1, view2] if self.separate_views else [torch.cat([view1, view2])]
        prediction = torch.cat([self.predictor(self.embed(v)) for v in views])
        with torch.no_grad():
            target = torch.cat([self.target_projector(resnet_features(self.target_backbone, v)) for v in views])
        p1, p2 = prediction.chunk(2)
        z1, z2 = target.chunk(2)
        return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target = momentum * target + (1 - momentum) * online; BatchNorm statistics are copied."""
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for p_online, p_target in zip(online.parameters(), target.parameters()):
                p_target.lerp_(p_online, 1 - momentum)
            for b_online, b_target in zip(online.buffers(), target.buffers()):
                b_target.copy_(b_online)
