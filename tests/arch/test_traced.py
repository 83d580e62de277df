"""Networks of no family: slots and rules through the torch.fx trace, or per-slot plans when it fails."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.models import build_model

HERE = "tests.arch.test_traced"


class TwoConv(nn.Module):
    """A residual unit of no known family: conv-bn-relu-conv-bn plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.na = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.nb = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride > 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.nb(self.b(torch.relu(self.na(self.a(x))))) + self.skip(x))


class Custom(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(
            TwoConv(width, width, 1), TwoConv(width, 2 * width, 2), TwoConv(2 * width, 4 * width, 2)
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.mean() > 0:  # data-dependent control flow: torch.fx cannot trace this
            y = y * 2
        return self.fc(y.mean((2, 3)))


def custom(**kwargs) -> nn.Module:
    return Custom(**kwargs)


def untraceable(**kwargs) -> nn.Module:
    return Untraceable(**kwargs)


def arch(norm: dict, fn: str = "custom", **backbone) -> ArchConfig:
    return ArchConfig.from_dict({"backbone": {"module": f"{HERE}:{fn}", **backbone}, "norm": norm})


def test_traced_route_finds_units_stages_positions() -> None:
    s = arch({}).structure()
    assert s.family == "traced" and s.num_stages == 3
    assert [u.name for u in s.units] == ["body.0", "body.1", "body.2"]
    assert s.slots["stem.1"].position == "stem"
    assert [s.slots[n].position for n in ("body.1.na", "body.1.nb", "body.1.skip.1")] == [
        "first",
        "last",
        "shortcut",
    ]
    assert [u.stage for u in s.units] == [1, 2, 3]
    assert s.by_unit["body.1"].positions == {"pre": 8, "residual": 16, "identity": 16, "post": 16}


def test_ibn_a_and_xbn_rules_on_the_traced_network() -> None:
    ibn = arch({"ibn": {"ratio": 0.25}}).resolve()
    assert [s for s, spec in ibn.slots.items() if spec.kind == "ibn"] == ["body.0.na", "body.1.na"]
    xbn = arch({"xbn": {"position": 3, "groups": 4}}).resolve()
    assert [s for s, spec in xbn.slots.items() if spec.kind == "gn"] == [
        "stem.1",
        "body.0.nb",
        "body.1.nb",
        "body.2.nb",
    ]
    assert str(xbn["body.2.nb"]) == "gn:groups=4" and str(xbn["body.1.skip.1"]) == "bn"


def test_traced_network_trains_inserts_and_rebuilds_strictly(tmp_path) -> None:
    config = arch({"ibn": {"variant": "b"}, "crossnorm": {"position": "identity"}, "selfnorm": {}})
    torch.manual_seed(0)
    model = build_model(config)
    x = torch.randn(4, 3, 16, 16)
    model.train()
    model(x).sum().backward()
    assert "body.0.crossnorm" in dict(model.named_modules()) and "body.0.post" in dict(model.named_modules())
    path = tmp_path / "a.yaml"
    path.write_text(config.to_yaml())
    torch.manual_seed(1)
    rebuilt = build_model(path)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    # all-BN plus inserts that are the identity in eval: the network's own outputs bit for bit
    torch.manual_seed(2)
    own = custom().eval()
    cn = build_model(arch({"crossnorm": {"position": "pre"}}))
    cn.load_state_dict(own.state_dict(), strict=True)
    assert torch.equal(own(x), cn.eval()(x))


def test_untraceable_network_takes_per_slot_plans_and_says_why_rules_fail() -> None:
    s = arch({}, "untraceable").structure()
    assert not s.traced and list(s.slots) == ["bn"]
    model = build_model(arch({"overrides": {"bn": "sn"}}, "untraceable"))
    assert type(model.bn).__name__ == "SwitchNorm2d"
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    for rule in ({"ibn": {}}, {"crossnorm": {}}, {"xbn": {}}):
        with pytest.raises(NormsearchError) as info:
            arch(rule, "untraceable")
        text = str(info.value)
        assert "cannot place this rule: torch.fx could not trace it" in text and "norm.overrides" in text
        assert "\n" not in text


def test_sources_by_name_with_closest_names_and_num_classes(monkeypatch) -> None:
    cases = [
        (
            {"torchvision": "densenet12"},
            "backbone.torchvision: no classification builder 'densenet12'; closest: densenet121",
        ),
        ({"timm": "seresnet5"}, "backbone.timm: no timm model 'seresnet5'; closest: seresnet50"),
        ({"module": f"{HERE}:custon"}, f"backbone.module: {HERE} has no callable 'custon'; closest: custom"),
        ({"module": "nowhere.at.all:f"}, "backbone.module: cannot import 'nowhere.at.all'"),
        ({"preset": "resnet-mini", "torchvision": "resnet18"}, "give preset or torchvision, not both"),
        (
            {"torchvision": "resnet18", "depths": [1]},
            "depths describe our ResNet, not a torchvision backbone",
        ),
    ]
    for backbone, message in cases:
        with pytest.raises(NormsearchError) as info:
            ArchConfig.from_dict({"backbone": backbone}, "cfg.yaml")
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    for backbone in (
        {"torchvision": "resnet18"},
        {"timm": "resnet10t"},
        {"module": f"{HERE}:custom"},
        {"preset": "densenet-mini"},
    ):
        config = ArchConfig.from_dict({"backbone": backbone})
        # the trainer's way of setting the data's class count
        config = config.model_copy(update={"backbone": config.backbone.model_copy(update={"num_classes": 7})})
        assert build_model(config).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(
        NormsearchError, match=r"timm is not installed; install the extra: pip install 'normsearch\[timm\]'"
    ):
        build_model({"backbone": {"timm": "resnet10t"}})
