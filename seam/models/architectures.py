"""CIFAR model definitions whose parameter names match published checkpoints.

Two CIFAR ResNet families exist in the wild and their checkpoints are not interchangeable:

* `cifar_resnet` — He et al. (2016) with "option A" shortcuts, as published by
  akamaster/pytorch_resnet_cifar10 (`conv1, bn1, layer1..3, linear`).
* `chenyaofo_cifar_resnet` / `chenyaofo_vgg16_bn` — the models of
  chenyaofo/pytorch-cifar-models used by the SeaM paper (conv1x1+BN "downsample"
  shortcuts; `fc` / `classifier` heads).

ImageNet ResNets come from torchvision unchanged (see `seam.models.registry`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CifarResNetA",
    "ChenyaofoCifarResNet",
    "ChenyaofoVGG",
    "cifar_resnet",
    "chenyaofo_cifar_resnet",
    "chenyaofo_vgg16_bn",
]


def _blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


# --- He et al. CIFAR ResNet, option A (akamaster/pytorch_resnet_cifar10 names) -------------


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channel dimension (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.in_planes = in_planes
        extra = out_planes - in_planes
        # Split the padding evenly on both sides, as in the reference implementation.
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def export_form(self) -> nn.Module:
        """The same map as a fixed 0/1 1x1 stride-2 convolution, for ONNX export.

        DeepSparse 1.8 does not run a channel ``Pad`` (nor a ``Concat`` with zeros): it
        splits the graph around it, or crashes. A convolution whose weight embeds channel
        i at i + pad_before is the identical function (x * 1 + 0 * others is exact) that
        every engine runs natively.
        """
        out_planes = self.in_planes + self.pad_before + self.pad_after
        return _EmbedChannels(self.in_planes, out_planes, self.pad_before)


class _EmbedChannels(nn.Module):
    """Fixed 1x1 stride-2 convolution placing input channel i at output channel i + offset."""

    def __init__(self, in_planes: int, out_planes: int, offset: int) -> None:
        super().__init__()
        weight = torch.zeros(out_planes, in_planes, 1, 1)
        weight[torch.arange(in_planes) + offset, torch.arange(in_planes), 0, 0] = 1.0
        # A buffer, not a parameter: it is part of the architecture, never masked or trained.
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=2)


class _BasicBlockA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2:
                raise ValueError("option-A shortcut supports stride 2 only")
            self.shortcut: nn.Module = _PadShortcut(in_planes, planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetA(nn.Module):
    """CIFAR ResNet with parameter-free option-A shortcuts; classifier is `linear`."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlockA(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            # The reference initialises every conv and linear weight with He-normal (fan_in).
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNetA:
    """He et al. CIFAR ResNet-`depth` with option-A shortcuts (akamaster checkpoint names)."""
    return CifarResNetA(_blocks_per_stage(depth), num_classes)


# --- chenyaofo/pytorch-cifar-models ---------------------------------------------------------


class _BasicBlockB(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        # Not in-place: in-place activations break forward hooks and masked-weight autograd.
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ChenyaofoCifarResNet(nn.Module):
    """CIFAR ResNet with conv1x1+BN projection shortcuts; classifier is `fc`."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlockB(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.avgpool(out).flatten(1))


def chenyaofo_cifar_resnet(depth: int, num_classes: int) -> ChenyaofoCifarResNet:
    """CIFAR ResNet-`depth` of chenyaofo/pytorch-cifar-models (its checkpoint names)."""
    return ChenyaofoCifarResNet(_blocks_per_stage(depth), num_classes)


# VGG-16 configuration "D": channel counts, "M" = 2x2 max-pool. Five pools take 32x32 to 1x1,
# which is why the classifier's input is exactly 512 features.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class ChenyaofoVGG(nn.Module):
    """CIFAR VGG with batch norm: `features` Sequential, 3-layer `classifier` Sequential."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def chenyaofo_vgg16_bn(num_classes: int) -> ChenyaofoVGG:
    """VGG16-BN of chenyaofo/pytorch-cifar-models for 32x32 inputs (its checkpoint names)."""
    return ChenyaofoVGG(_VGG16_CFG, num_classes)
