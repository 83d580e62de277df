from __future__ import annotations

from collections import Counter

import pytest
import torch
import yaml

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.models import build_model

FAMILIES = {
    "bn": {},
    "input": {"input": "instance"},
    "ibn_a": {"ibn": {"variant": "a", "ratio": 0.25, "stages": [1, 2]}},
    "ibn_b": {"ibn": {"variant": "b"}},
    "sn_soft": {"switchable": {"stages": [2, 3], "hard_at": 0.5, "batch_average": True}},
    "sn_hard": {
        "switchable": {"mode": "hard", "mean": "in", "var": "bn", "choices": {"layer3.0.bn1": "ln/ln"}}
    },
    "xbn": {"xbn": {"bfn": "gn", "groups": 8, "position": 1, "every": 2}},
    "cnsn": {
        "crossnorm": {"p": 0.7, "active_num": 2, "mode": "1ins", "crop": "both", "position": "identity"},
        "selfnorm": {"form": "two_branch", "position": "pre", "stages": [1]},
    },
    "overrides": {"overrides": {"layer2.0.bn1": "sn", "layer3.1.bn2": "gn:groups=8", "layer1.1.post": "in"}},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_yaml_and_json_round_trip(family: str) -> None:
    config = ArchConfig.from_dict({"backbone": {"preset": "resnet-tiny"}, "norm": FAMILIES[family]})
    again = ArchConfig.from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert ArchConfig.model_validate_json(config.to_json()) == config
    assert again.resolve() == config.resolve()


def _kinds(config: dict) -> tuple[Counter, dict]:
    plan = ArchConfig.from_dict({"backbone": {"preset": "resnet50"}, "norm": config}).resolve()
    return Counter(spec.kind for spec in plan.slots.values()), plan.slots


def test_ibn_net50_a_has_13_ibn_slots_none_in_layer4() -> None:
    counts, slots = _kinds({"ibn": {"variant": "a", "ratio": 0.5, "stages": [1, 2, 3]}})
    assert counts["ibn"] == 13
    ibn_slots = [s for s, spec in slots.items() if spec.kind == "ibn"]
    assert all(s.endswith(".bn1") and not s.startswith("layer4") for s in ibn_slots)
    assert _kinds({"ibn": {"variant": "a"}})[0]["ibn"] == 13  # the default stages are IBN-Net50-a's


def test_ibn_net50_b_has_exactly_three_instance_norms() -> None:
    counts, slots = _kinds({"ibn": {"variant": "b", "stages": [1, 2]}})
    assert counts["in"] == 3
    assert [s for s, spec in slots.items() if spec.kind == "in"] == ["bn1", "layer1.2.post", "layer2.3.post"]
    assert _kinds({"ibn": {"variant": "b"}})[0]["in"] == 3


def test_xbnblock_p2_and_every() -> None:
    _, slots = _kinds({"xbn": {"bfn": "gn", "groups": 64, "position": 2}})
    gn = [s for s, spec in slots.items() if spec.kind == "gn"]
    assert gn == ["bn1"] + [s for s in slots if s.endswith(".bn2")] and len(gn) == 17
    assert all(slots[s].kind == "bn" for s in slots if s.endswith("downsample.1"))
    assert slots["bn1"].get("groups") == 64
    counts2, slots2 = _kinds({"xbn": {"position": 2, "every": 2, "stem": False}})
    assert counts2["gn"] == 8
    assert [s for s, spec in slots2.items() if spec.kind == "gn"][:2] == ["layer1.1.bn2", "layer2.0.bn2"]
    counts8, _ = _kinds({"xbn": {"position": 3, "every": 8, "stem": False, "bfn": "in"}})
    assert counts8["in"] == 2


def test_xbn_positions_on_basic_blocks_and_group_clamping() -> None:
    def slots(position: int) -> list[str]:
        plan = ArchConfig.from_dict(
            {"backbone": {"preset": "resnet-mini"}, "norm": {"xbn": {"position": position, "groups": 32}}}
        ).resolve()
        return [s for s, spec in plan.slots.items() if spec.kind == "gn"]

    assert slots(1) == slots(2) == ["bn1", "layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1"]
    assert slots(3) == ["bn1", "layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]
    plan = ArchConfig.from_dict(
        {"backbone": {"preset": "resnet-mini"}, "norm": {"xbn": {"groups": 32}}}
    ).resolve()
    assert plan["layer1.0.bn1"].get("groups") == 16  # clamped to C = 16


def test_precedence_default_xbn_ibn_switchable_overrides() -> None:
    plan = ArchConfig.from_dict(
        {
            "backbone": {"preset": "resnet-tiny"},
            "norm": {
                "default": "gn:groups=4",
                "xbn": {"position": 1, "bfn": "in", "stem": False},
                "ibn": {"stages": [1, 2]},
                "switchable": {"stages": [2]},
                "overrides": {"layer2.1.bn1": "ln"},
            },
        }
    ).resolve()
    assert str(plan["layer1.0.bn2"]) == "gn:groups=4"  # default
    assert str(plan["layer3.0.bn1"]) == "in:affine=false"  # xbn, as the released XBNBlock-IN
    assert str(plan["layer1.0.bn1"]) == "ibn:ratio=0.5"  # ibn replaces xbn
    assert str(plan["layer2.0.bn1"]) == "sn"  # switchable replaces ibn
    assert str(plan["layer2.1.bn1"]) == "ln"  # an override replaces everything


def test_inserts_and_schedules() -> None:
    plan = ArchConfig.from_dict({"backbone": {"preset": "resnet-tiny"}, "norm": FAMILIES["cnsn"]}).resolve()
    assert len([n for n in plan.inserts if n.endswith("crossnorm")]) == 6
    assert list(plan.block_inserts("layer1.0")) == ["crossnorm", "selfnorm"]
    assert "layer2.0.selfnorm" not in plan.inserts  # selfnorm only in stage 1
    assert plan.inserts["layer2.0.crossnorm"].channels == 32
    pre = ArchConfig.from_dict({"norm": {"selfnorm": {"position": "pre"}}}).resolve()
    assert pre.inserts["layer2.0.selfnorm"].channels == 16  # "pre": the block's input channels
    assert (plan.crossnorm.p, plan.crossnorm.active_num) == (0.7, 2)
    sw = ArchConfig.from_dict({"norm": FAMILIES["sn_soft"]}).resolve().switchable
    assert (sw.hard_at, sw.batch_average) == (0.5, True)


BAD = [
    ({"norm": {"ibn": {"ratoi": 0.5}}}, "norm.ibn.ratoi: unknown key; did you mean 'ratio'?"),
    ({"norm": {"ibm": {"ratio": 0.5}}}, "norm.ibm: unknown key; did you mean 'ibn'?"),
    ({"norm": {"default": "batchnorm"}}, "norm.default: unknown normalizer kind 'batchnorm'; allowed: bn"),
    ({"norm": {"ibn": {"ratio": 1.5}}}, "norm.ibn.ratio: Input should be less than or equal to 1"),
    (
        {"norm": {"ibn": {"stages": [4]}}},
        "norm.ibn.stages: stage 4 out of range; this backbone has stages 1-3",
    ),
    (
        {"norm": {"xbn": {"groups": 12}}},
        "norm.xbn.groups: groups=12 does not divide the 16 channels of slot bn1",
    ),
    (
        {"norm": {"overrides": {"layer9.0.bn1": "in"}}},
        "norm.overrides: no slot 'layer9.0.bn1' in this network",
    ),
    (
        {"norm": {"overrides": {"layer1.0.bn3": "in"}}},
        "norm.overrides: no slot 'layer1.0.bn3' in this network",
    ),
    ({"norm": {"overrides": {"layer1.0.bn1": "gn:groups=6"}}}, "groups=6 does not divide the 16 channels"),
    ({"norm": {"xbn": {"position": 4}}}, "norm.xbn.position: Input should be 1, 2 or 3"),
    (
        {"backbone": {"preset": "resnet-huge"}},
        "backbone.preset: unknown preset 'resnet-huge'; allowed: resnet-mini",
    ),
    (
        {"norm": {"crossnorm": {"crop": "middle"}}},
        "norm.crossnorm.crop: must be one of none|style|content|both",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_configs_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(NormsearchError) as info:
        ArchConfig.from_dict(data, source="cfg.yaml")
    text = str(info.value)
    assert text.startswith("cfg.yaml: ") and message in text and "\n" not in text


def test_released_defaults_of_xbn_and_switchable_rules() -> None:
    """Issue 14 items 2-4: XBN-IN is affine-free and GN takes 64 groups (clamped to C) as released; the
    switchable rule over the whole network switches the stem and zero-initialises each block's last γ."""
    r50 = {"backbone": {"preset": "resnet50"}}
    plan = ArchConfig.from_dict({**r50, "norm": {"xbn": {"position": 2}}}).resolve()
    assert str(plan["layer1.0.bn2"]) == "gn:groups=64" and str(plan["layer4.2.bn2"]) == "gn:groups=64"
    plan = ArchConfig.from_dict({**r50, "norm": {"xbn": {"bfn": "in"}}}).resolve()
    assert str(plan["layer2.1.bn2"]) == "in:affine=false"
    plan = ArchConfig.from_dict({**r50, "norm": {"xbn": {"bfn": "in", "affine": True}}}).resolve()
    assert str(plan["layer2.1.bn2"]) == "in:affine=true"
    plan = ArchConfig.from_dict({**r50, "norm": {"xbn": {"affine": False}}}).resolve()
    model = build_model(ArchConfig.from_dict({**r50, "norm": {"xbn": {"affine": False}}}))
    assert model.layer1[0].bn2.weight is None and str(plan["layer1.0.bn2"]) == "gn:affine=false,groups=64"

    plan = ArchConfig.from_dict({"norm": {"switchable": {}}}).resolve()
    assert str(plan["bn1"]) == "sn"  # the stem, as the released SN ResNet
    assert str(plan["layer1.0.bn2"]) == "sn:last_gamma=true" and str(plan["layer1.0.bn1"]) == "sn"
    assert str(plan["layer2.0.downsample.1"]) == "sn"
    model = build_model(ArchConfig.from_dict({"norm": {"switchable": {}}}))
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0 and torch.all(model.layer1[0].bn1.weight == 1)
    plan = ArchConfig.from_dict({"norm": {"switchable": {"stages": [2]}}}).resolve()
    assert str(plan["bn1"]) == "bn"  # a rule restricted to some stages leaves the stem alone
    plan = ArchConfig.from_dict({"norm": {"switchable": {"stages": [2], "stem": True, "last_gamma": False}}})
    assert str(plan.resolve()["bn1"]) == "sn" and str(plan.resolve()["layer2.0.bn2"]) == "sn"


def test_crossnorm_released_samplers_and_sparse_switchable_reach_the_layers() -> None:
    config = ArchConfig.from_dict(
        {
            "backbone": {"preset": "resnet-mini"},
            "norm": {
                "switchable": {"mode": "sparse", "stages": [2]},
                "crossnorm": {"pairing": "randperm", "boxes": "clipped", "crop": "both"},
            },
        }
    )
    plan = config.resolve()
    assert {str(s) for slot, s in plan.slots.items() if slot.startswith("layer2")} == {
        "ssn",
        "ssn:last_gamma=true",
    }
    model = build_model(config)
    cn = model.get_submodule("layer1.0.crossnorm")
    assert (cn.pairing, cn.boxes, cn.crop) == ("randperm", "clipped", "both")
    assert type(model.get_submodule("layer2.0.bn1")).__name__ == "SparseSwitchNorm2d"
    with pytest.raises(NormsearchError, match="pairing: must be one of derangement"):
        ArchConfig.from_dict({"norm": {"crossnorm": {"pairing": "shuffle"}}})
