"""The papers' rules on every family, against the released placements written out here."""

from __future__ import annotations

import itertools

import pytest

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError


def plan(backbone: dict, norm: dict):
    return ArchConfig.from_dict({"backbone": backbone, "norm": norm}).resolve()


def kinds(p, kind: str) -> list[str]:
    return [slot for slot, spec in p.slots.items() if spec.kind == kind]


def test_densenet121_ibn_a_is_the_released_placement() -> None:
    """densenet_ibn.py: `_DenseBlock(..., ibn=i < 3)` and `if ibn and i % 3 == 0` -> norm1 of layers
    1, 4, 7, ... in dense blocks 1-3; `IBN(C, 0.4)`: BN on the first int(0.6 C) channels, IN on the rest."""
    p = plan({"torchvision": "densenet121"}, {"ibn": {}})
    expected = [
        f"features.denseblock{b}.denselayer{i}.norm1"
        for b, layers in ((1, 6), (2, 12), (3, 24))
        for i in range(1, layers + 1, 3)
    ]
    assert kinds(p, "ibn") == expected and len(expected) == 14
    assert {str(p[s]) for s in expected} == {"ibn:order=bn_in,ratio=0.4"}
    assert p.channels["features.denseblock1.denselayer4.norm1"] == 64 + 3 * 32
    # The ResNet placement is unchanged on torchvision's ResNet: IN first, ratio 0.5, every block.
    r50 = plan({"torchvision": "resnet50"}, {"ibn": {}})
    assert r50.slots == plan({"preset": "resnet50"}, {"ibn": {}}).slots
    assert str(r50["layer1.0.bn1"]) == "ibn:ratio=0.5"
    # The channel order is a key either family can use.
    assert str(plan({"preset": "resnet-mini"}, {"ibn": {"order": "bn_in"}})["layer1.0.bn1"]) == (
        "ibn:order=bn_in,ratio=0.5"
    )


@pytest.mark.parametrize("rule", [{"ibn": {}}, {"ibn": {"variant": "b"}}, {"xbn": {}}, {"switchable": {}}])
def test_torchvision_and_timm_resnets_get_our_resnet_plans(rule: dict) -> None:
    """IBN-a/IBN-b/XBN/SN on ResNeXt-50 and SE-ResNet exactly as on ResNet-50: same slots, SE untouched."""
    ours = plan({"preset": "resnext50_32x4d"}, rule)
    assert plan({"torchvision": "resnext50_32x4d"}, rule) == ours
    assert plan({"timm": "seresnet50"}, rule).slots == plan({"preset": "resnet50"}, rule).slots


def test_resnext50_xbn_p2_is_gn64_in_every_bottleneck() -> None:
    p = plan({"torchvision": "resnext50_32x4d"}, {"xbn": {"position": 2}})
    bottlenecks = [f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), start=1) for b in range(n)]
    assert kinds(p, "gn") == ["bn1"] + [f"{b}.bn2" for b in bottlenecks]
    assert {str(p[f"{b}.bn2"]) for b in bottlenecks} == {"gn:groups=64"}


def test_mobilenet_v2_and_shufflenet_xbn_at_every_depthwise_norm() -> None:
    """mobilenetV2_XBNBlock.py / shuffleV2_XBNBlock.py: `my.Norm` (GN 16 / 29 groups) after every depthwise
    conv, the stem and every other norm BatchNorm."""
    import torchvision
    from torch import nn

    for name, groups in (("mobilenet_v2", 16), ("shufflenet_v2_x1_0", 29)):
        model = torchvision.models.get_model(name)
        modules = dict(model.named_modules())
        depthwise = []
        for parent, module in modules.items():
            children = list(module.named_children())
            for (_, conv), (norm_name, norm) in itertools.pairwise(children):
                if (
                    isinstance(conv, nn.Conv2d)
                    and conv.groups == conv.in_channels > 1
                    and isinstance(norm, nn.BatchNorm2d)
                ):
                    depthwise.append(f"{parent}.{norm_name}")
        p = plan({"torchvision": name}, {"xbn": {}})
        assert set(kinds(p, "gn")) == set(depthwise) and depthwise
        assert all(p[s].get("groups") == min(groups, p.channels[s]) for s in depthwise)


def test_ibn_b_on_densenet_and_plain_networks() -> None:
    """IBN-b beyond residual networks (our documented rule): IN on the stem and on the output of each
    listed stage (a dense block's concatenation; a plain stage's last activation)."""
    p = plan({"torchvision": "densenet121"}, {"ibn": {"variant": "b"}})
    assert kinds(p, "in") == ["features.norm0", "features.denseblock1.post", "features.denseblock2.post"]
    assert p.channels["features.denseblock1.post"] == 256
    vgg = plan({"torchvision": "vgg11_bn"}, {"ibn": {"variant": "b"}})
    assert kinds(vgg, "in") == ["features.1_post", "features.5_post"]


def test_switchable_covers_every_slot_and_crossnorm_once_per_unit() -> None:
    p = plan({"torchvision": "densenet121"}, {"switchable": {}, "crossnorm": {"position": "residual"}})
    assert kinds(p, "sn") == list(p.slots) and len(p.slots) == 121
    assert str(p["features.denseblock1.denselayer1.norm2"]) == "sn:last_gamma=true"  # each unit's last norm
    assert len(p.inserts) == 58 and all(n.endswith(".crossnorm") for n in p.inserts)
    with pytest.raises(
        NormsearchError,
        match=r"'identity' does not exist in this densenet network; positions here: pre, residual$",
    ):
        plan({"torchvision": "densenet121"}, {"crossnorm": {"position": "identity"}})
    m = plan({"torchvision": "mobilenet_v2"}, {"crossnorm": {"position": "identity"}})
    assert len(m.inserts) == 10  # only the inverted residuals that add their input


def test_structure_of_families() -> None:
    s = ArchConfig.from_dict({"backbone": {"torchvision": "mobilenet_v2"}}).structure()
    assert (s.family, s.num_stages, len(s.units)) == ("mobilenetv2", 5, 17)
    first = s.by_unit["features.2"]
    assert [s.slots[n].position for n in first.norms] == ["first", "middle", "last"]
    assert s.slots["features.2.conv.1.1"].depthwise and s.slots["features.0.1"].position == "stem"
    assert s.slots["features.18.1"].position == "head"
    d = ArchConfig.from_dict({"backbone": {"torchvision": "densenet121"}}).structure()
    assert d.slots["features.transition1.norm"].position == "transition"
    assert d.slots["features.transition1.norm"].stage == 1 and d.num_stages == 4
    assert [len(d.stage_units(i)) for i in (1, 2, 3, 4)] == [6, 12, 24, 16]
