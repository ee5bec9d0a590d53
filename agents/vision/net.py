"""A small ResNet written with torch only, its residual blocks laid out as torchvision's.

``BasicBlock`` and ``Bottleneck`` use torchvision's attribute names and forward (``conv1``, ``bn1``, ``relu``,
``conv2``, ``bn2`` [, ``conv3``, ``bn3``], ``downsample``; ``out += identity`` then ReLU), so a state dict
moves between this net and one built from torchvision's blocks, and ``rlhook.adapters.vision.ResNetCanonizer``
treats both the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "shapes_resnet"]


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; ``(B, inplanes, H, W) -> (B, planes, H/stride, W/stride)``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * planes``; ``(B, inplanes, H, W) -> (B, 4 planes, ...)``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Stem (3x3 conv, batch norm, ReLU), stages of residual blocks, global average pooling, a linear head.

    ``stages``: ``[(block class, planes, n_blocks, stride)]``; the block classes may be torchvision's.
    ``(B, in_channels, H, W) -> (B, n_classes)`` logits.
    """

    def __init__(
        self,
        stages: Sequence[tuple[type[nn.Module], int, int, int]],
        n_classes: int,
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        inplanes = width
        for i, (block, planes, n, stride) in enumerate(stages):
            layers = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = _downsample(inplanes, planes * block.expansion, s)
                layers.append(block(inplanes, planes, s, down))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.n_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def shapes_resnet(n_classes: int) -> ResNet:
    """The net trained on the shapes task: three BasicBlock stages (16, 32, 64 channels), 32x32 RGB input."""
    return ResNet([(BasicBlock, 16, 1, 1), (BasicBlock, 32, 1, 2), (BasicBlock, 64, 1, 2)], n_classes)
