"""One network of every torchvision classification family and two timm models through the conformance
checks (slots; all-BN and insert plans bit for bit; IBN-a, SN and GN plans train at 64 px; export and
strict rebuild). `scripts/sweep_networks.py` runs the same checks over every torchvision builder."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from normsearch.models.conformance import check_network

HERE = "tests.models.test_network_conformance"


def resnext_small(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNeXt (32×4d bottlenecks), one block per stage to keep the test fast."""
    return torchvision.models.ResNet(Bottleneck, [1, 1, 1, 1], num_classes, groups=32, width_per_group=4)


def wide_resnet_small(num_classes: int = 10) -> nn.Module:
    """torchvision's Wide ResNet-50-2 bottleneck (width 128 per group), one block per stage."""
    return torchvision.models.ResNet(Bottleneck, [1, 1, 1, 1], num_classes, width_per_group=128)


def vgg_bn_small(num_classes: int = 10) -> nn.Module:
    """torchvision's VGG with BatchNorm, narrow layers and a small classifier (vgg11_bn's 4096-wide head
    alone costs a minute here; the sweep runs the real builders)."""
    from torchvision.models.vgg import make_layers

    model = torchvision.models.VGG(make_layers([16, "M", 32, "M", 64, 64, "M", 64, "M"], batch_norm=True))
    model.classifier = nn.Linear(64 * 7 * 7, num_classes)
    return model


NETWORKS = {
    "resnet18": ({"torchvision": "resnet18"}, "resnet"),
    "resnext": ({"module": f"{HERE}:resnext_small"}, "resnet"),
    "wide_resnet": ({"module": f"{HERE}:wide_resnet_small"}, "resnet"),
    "densenet121": ({"torchvision": "densenet121"}, "densenet"),
    "mobilenet_v2": ({"torchvision": "mobilenet_v2"}, "mobilenetv2"),
    "mobilenet_v3_small": ({"torchvision": "mobilenet_v3_small"}, "mobilenetv3"),
    "efficientnet_b0": ({"torchvision": "efficientnet_b0"}, "efficientnet"),
    "regnet_x_400mf": ({"torchvision": "regnet_x_400mf"}, "regnet"),
    "shufflenet_v2_x0_5": ({"torchvision": "shufflenet_v2_x0_5"}, "shufflenetv2"),
    "mnasnet0_5": ({"torchvision": "mnasnet0_5"}, "mnasnet"),
    "vgg_bn": ({"module": f"{HERE}:vgg_bn_small"}, "plain"),
    "timm seresnet18": ({"timm": "seresnet18"}, "resnet"),
    "timm mobilenetv3_small_050": ({"timm": "mobilenetv3_small_050"}, "traced"),  # BatchNormAct2d slots
}


# The networks that take over 3 s each on a 2-core machine (--durations) run only in the full suite; the
# fast loop (-m 'not slow') keeps ResNeXt, the MobileNets, ShuffleNet, MnasNet and a traced timm model.
SLOW = {
    "resnet18",
    "wide_resnet",
    "densenet121",
    "efficientnet_b0",
    "regnet_x_400mf",
    "vgg_bn",
    "timm seresnet18",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NETWORKS]
)
def test_family_conformance(name: str) -> None:
    backbone, family = NETWORKS[name]
    result = check_network(backbone, size=64, name=name)
    assert result.family == family and result.slots > 0 and result.units > 0
    assert result.checks == {
        "slots": "ok",
        "all-BN bit for bit": "ok",
        "inserts bit for bit": "ok",
        "IBN-a trains": "ok",
        "SN trains": "ok",
        "GN trains": "ok",
        "export-rebuild strict": "ok",
    }, result.checks


def test_a_network_without_norms_says_so() -> None:
    result = check_network({"torchvision": "vit_b_16"}, size=224)
    assert result.slots == 0 and result.checks == {"slots": "no normalization slots"} and result.passed
