"""Small-image zoo for 28-32 px inputs (Fashion-MNIST, CIFAR): ResNet-20/56 and MobileNetV2.

Written for widthsearch's graph discovery: only standard nn modules, forwards that
torch.fx.symbolic_trace can trace (no data-dependent control flow), and no channel counts
in forward, so every layer's width can be changed from the outside.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from widthsearch.errors import WidthSearchError
from widthsearch.models.registry import register

__all__ = ["CifarResNet", "BasicBlock", "MobileNetV2", "InvertedResidual"]

_SMALL_INPUT = (3, 32, 32)


def _check_args(num_classes: int, in_channels: int, width_mult: float) -> None:
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WidthSearchError(f"{arg} must be a positive int, got {value!r}")
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not width_mult > 0
        or width_mult == float("inf")
    ):
        raise WidthSearchError(f"width_mult must be a positive number, got {width_mult!r}")


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never dropping more than 10% (MobileNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN projection shortcut when the shape changes (option B)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32 px images (He et al. 2016, sec. 4.2): 6n+2 layers, 16/32/64 channels."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        widths = [_scaled(c, width_mult) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register("resnet20", default_input_size=_SMALL_INPUT, smallest_input_size=8)
def resnet20(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """ResNet-20 (3 BasicBlocks per stage, ~0.27M params at 10 classes)."""
    _check_args(num_classes, in_channels, width_mult)
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)


@register("resnet56", default_input_size=_SMALL_INPUT, smallest_input_size=8)
def resnet56(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """ResNet-56 (9 BasicBlocks per stage, ~0.86M params at 10 classes)."""
    _check_args(num_classes, in_channels, width_mult)
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)


# --------------------------------------------------------------------------- MobileNetV2


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 28-32 px images: total stride 4 instead of 32.

    The stem and the first two stride-2 stages of the ImageNet model run at stride 1, so a
    32 px input reaches the last stage at 8x8.
    """

    # expansion t, output channels c, blocks n, stride s (ImageNet strides 2,2 -> 1,1)
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 1),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, input_channel, 3, 1)]
        for t, c, n, s in self.SETTINGS:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(_conv_bn_relu6(input_channel, self.last_channel, 1, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register("mobilenetv2", default_input_size=_SMALL_INPUT, smallest_input_size=8)
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
) -> MobileNetV2:
    """MobileNetV2 for small images (~2.2M params at 10 classes)."""
    _check_args(num_classes, in_channels, width_mult)
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)
