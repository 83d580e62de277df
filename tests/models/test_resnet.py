from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import normsearch
from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.norms import CrossNorm, CrossNormPolicy
from tests.arch.test_arch import FAMILIES


def _train_step(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    model.train()
    if getattr(model, "plan", None) is not None and model.plan.crossnorm is not None:
        policy = CrossNormPolicy(model, p=1.0, active_num=1, seed=seed)
        policy.step()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_build_train_save_rebuild_from_yaml_identical(family: str, tmp_path: Path) -> None:
    config = ArchConfig.from_dict({"backbone": {"preset": "resnet-tiny"}, "norm": FAMILIES[family]})
    path = tmp_path / "arch.yaml"
    path.write_text(config.to_yaml())
    torch.manual_seed(0)
    model = normsearch.build_model(config)
    _train_step(model)
    state = _state_bytes(model)

    torch.manual_seed(123)  # a different initialization, entirely replaced by the state_dict
    rebuilt = normsearch.build_model(path)
    rebuilt.load_state_dict(torch.load(io.BytesIO(state)), strict=True)
    x = torch.randn(5, 3, 32, 32)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_every_slot_holds_the_planned_normalizer() -> None:
    config = ArchConfig.from_dict(
        {"backbone": {"preset": "resnet-tiny"}, "norm": FAMILIES["sn_hard"] | FAMILIES["cnsn"]}
    )
    plan = config.resolve()
    model = normsearch.build_model(config)
    modules = dict(model.named_modules())
    for slot, spec in plan.slots.items():
        expected = type(normsearch.make_norm(spec, plan.channels[slot]))
        assert type(modules[slot]) is expected, slot
    assert modules["layer3.0.bn1"].mean_choice == "ln"
    assert sum(isinstance(m, CrossNorm) for m in model.modules()) == 6


def test_zero_init_last_gamma() -> None:
    model = normsearch.build_model({"backbone": {"preset": "resnet-mini", "zero_init_last": True}})
    assert all(
        torch.equal(block.bn2.weight, torch.zeros_like(block.bn2.weight))
        for name, block in model.named_modules()
        if name.count(".") == 1 and name.startswith("layer")
    )
    assert not torch.equal(model.layer1[0].bn1.weight, torch.zeros(16))


def test_our_resnet50_and_resnet18_share_torchvision_state_dict_keys() -> None:
    for preset, ctor in (
        ("resnet18", torchvision.models.resnet18),
        ("resnet50", torchvision.models.resnet50),
    ):
        ours = normsearch.build_model({"backbone": {"preset": preset, "num_classes": 1000}})
        theirs = ctor()
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


@pytest.mark.parametrize("family", ["ibn_a", "ibn_b", "cnsn", "xbn", "sn_soft", "input"])
def test_apply_plan_to_torchvision_resnet18_round_trip(family: str, tmp_path: Path) -> None:
    norm = dict(FAMILIES[family])
    if family == "xbn":
        norm = {"xbn": {"groups": 32, "position": 2, "every": 2}}
    config = ArchConfig.from_dict({"backbone": {"preset": "resnet18", "num_classes": 10}, "norm": norm})
    path = tmp_path / "arch.yaml"
    path.write_text(config.to_yaml())

    torch.manual_seed(0)
    model = normsearch.apply_plan(torchvision.models.resnet18(num_classes=10), config.resolve())
    _train_step(model)
    state = _state_bytes(model)
    rebuilt = normsearch.apply_plan(
        torchvision.models.resnet18(num_classes=10), normsearch.load_arch(path).resolve()
    )
    rebuilt.load_state_dict(torch.load(io.BytesIO(state)), strict=True)
    ours = normsearch.build_model(path)  # our ResNet is the same network: it loads the same weights
    ours.load_state_dict(torch.load(io.BytesIO(state)), strict=True)
    x = torch.randn(3, 3, 64, 64)
    for m in (model, rebuilt, ours):
        m.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
        torch.testing.assert_close(ours(x), model(x))


def test_apply_plan_on_bottleneck_variants() -> None:
    plan = ArchConfig.from_dict(
        {"backbone": {"preset": "resnext50_32x4d"}, "norm": {"xbn": {"groups": 64}}}
    ).resolve()
    model = normsearch.apply_plan(torchvision.models.resnext50_32x4d(), plan)
    assert isinstance(model.layer1[0].bn2, nn.GroupNorm) and model.layer1[0].bn2.num_groups == 64
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_apply_plan_errors_name_the_slot() -> None:
    plan50 = ArchConfig.from_dict({"backbone": {"preset": "resnet50"}}).resolve()
    with pytest.raises(NormsearchError, match=r"the model has no norm slot 'layer1\.0\.bn3'"):
        normsearch.apply_plan(torchvision.models.resnet18(), plan50)
    plan_wide = ArchConfig.from_dict({"backbone": {"preset": "wide_resnet50_2"}}).resolve()
    with pytest.raises(NormsearchError, match=r"slot 'layer1\.0\.bn1' has 64 channels in the model but 128"):
        normsearch.apply_plan(torchvision.models.resnet50(), plan_wide)
