"""The CNSN paper's CIFAR networks (CrossNorm/SelfNorm Table 1) and small variants for the built-in
benchmark, as `module:` builders (`backbone.preset` names them in arch/config.py PRESETS).

- `wide_resnet`: pre-activation Wide ResNet (Zagoruyko & Komodakis 2016), WRN-40-2 by default: a 3×3
  stem, three groups of (depth-4)/6 blocks bn-relu-conv-bn-relu-conv at widths 16k, 32k, 64k, a 1×1
  projection where the width or stride changes (on the pre-activated input), a final bn-relu. Its blocks
  belong to no family on purpose: its units come from the torch.fx trace.
- `densenet_cifar`: torchvision's DenseNet-BC (bottleneck 1×1 conv, transitions halving the channels)
  with a CIFAR stem (3×3 conv, stride 1, no max-pool); DenseNet-BC (k = 12, d = 100) is three dense
  blocks of 16 layers and 2k initial features. Same module names as torchvision's, so the DenseNet
  family adapter (and the IBN-Net DenseNet placement) applies.
- `mobilenet_v2_cifar`: torchvision's MobileNetV2 with a stride-1 stem and a shortened, CIFAR-strided
  inverted-residual setting and a 320-wide head (small by default).
- `all_conv_net`: All-CNN-C (Springenberg et al. 2015) with BatchNorm after every convolution (nine
  conv-BN-GELU stages, two strided), global average pooling and a linear classifier: a plain network.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import DenseNet, MobileNetV2
from torchvision.ops.misc import Conv2dNormActivation


class PreActBlock(nn.Module):
    """bn-relu-conv3×3-bn-relu-conv3×3 plus the input (or a 1×1 projection of the pre-activated input)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.drop = nn.Dropout(drop_rate)
        self.shortcut = (
            None if in_ch == out_ch and stride == 1 else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.drop(self.relu(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Pre-activation WRN-d-k for 32 px images."""

    def __init__(
        self,
        depth: int = 40,
        widen: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        in_ch = widths[0]
        for group, width in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(PreActBlock(in_ch, width, 2 if group > 0 and i == 0 else 1, drop_rate))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def wide_resnet(
    depth: int = 40, widen: int = 2, num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0
) -> nn.Module:
    """Pre-activation WRN-`depth`-`widen` (WRN-40-2: 2.2M parameters)."""
    return WideResNet(depth, widen, num_classes, in_channels, drop_rate)


def densenet_cifar(
    growth_rate: int = 12,
    block_config: list[int] | tuple[int, ...] = (16, 16, 16),
    num_init_features: int | None = None,
    bn_size: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    stem_stride: int = 1,
) -> nn.Module:
    """DenseNet-BC with a CIFAR stem (3×3 conv, `stem_stride`, no max-pool); `num_init_features` defaults
    to 2k as in DenseNet-BC."""
    init = num_init_features or 2 * growth_rate
    model = DenseNet(growth_rate, tuple(block_config), init, bn_size, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, init, 3, stem_stride, 1, bias=False)
    nn.init.kaiming_normal_(model.features.conv0.weight)
    model.features.pool0 = nn.Identity()
    return model


# Channel counts multiples of 32 past the first unit, so GN(8|16|32) divides every slot (xbn_position).
MOBILE_CIFAR = [[1, 16, 1, 1], [6, 32, 2, 1], [6, 64, 2, 2], [6, 96, 2, 2]]


def mobilenet_v2_cifar(
    width_mult: float = 1.0,
    setting: list[list[int]] | None = None,
    last_channel: int = 320,
    num_classes: int = 10,
    in_channels: int = 3,
    stem_stride: int = 1,
) -> nn.Module:
    """MobileNetV2 for 32 px: stride-1 stem, `setting` rows (t, c, n, s) as torchvision's, and a
    `last_channel`-wide head conv instead of 1280 (the small default has 0.2M parameters)."""
    model = MobileNetV2(num_classes, width_mult, setting or MOBILE_CIFAR)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stem_stride, 1, bias=False)
    head = model.features[-1]
    model.features[-1] = Conv2dNormActivation(head[0].in_channels, last_channel, 1, activation_layer=nn.ReLU6)
    model.classifier[-1] = nn.Linear(last_channel, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class AllConvNet(nn.Module):
    """All-CNN-C with BN: conv3×3 ×3 at `width` (the third strided), ×3 at 2·width (the third strided),
    conv3×3 (no padding), conv1×1, conv1×1, each followed by BatchNorm and GELU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 96) -> None:
        super().__init__()
        w, w2 = width, 2 * width
        spec = [
            (in_channels, w, 3, 1, 1),
            (w, w, 3, 1, 1),
            (w, w, 3, 2, 1),
            (w, w2, 3, 1, 1),
            (w2, w2, 3, 1, 1),
        ]
        spec += [(w2, w2, 3, 2, 1), (w2, w2, 3, 1, 0), (w2, w2, 1, 1, 0), (w2, w2, 1, 1, 0)]
        layers: list[nn.Module] = []
        for cin, cout, k, s, p in spec:
            layers += [nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def all_conv_net(num_classes: int = 10, in_channels: int = 3, width: int = 96) -> nn.Module:
    """All-CNN-C with BatchNorm (1.4M parameters at width 96)."""
    return AllConvNet(num_classes, in_channels, width)
