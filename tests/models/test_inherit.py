"""Weight inheritance: a BatchNorm checkpoint's tensors in IBN, SN, GN, IN slots (and back), equal to their
source; networks that are the checkpoint's own compute what it computes; strictness; `plan --weights`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from normsearch.arch import ArchConfig
from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.models import build_model, inherit
from normsearch.models.inherit import SELFNORM_GATE
from normsearch.norms import IBN, SwitchNorm2d

R18 = {"preset": "resnet18", "num_classes": 1000}


@pytest.fixture(scope="module")
def tv18() -> torchvision.models.ResNet:
    """torchvision's resnet18 with trained-looking tensors: random affines, statistics from two batches."""
    torch.manual_seed(2)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
    return model.eval()


@pytest.fixture(scope="module")
def weights_file(tv18, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tv18.state_dict(), path)
    return path


def _arch(norm: dict, weights: Path | None = None, **backbone) -> ArchConfig:
    extra = {"weights": str(weights)} if weights else {}
    return ArchConfig.from_dict({"backbone": {**R18, **extra, **backbone}, "norm": norm})


@pytest.mark.parametrize("norm", [{}, {"ibn": {"ratio": 0.0, "stages": [1, 2, 3]}}])
def test_bn_and_ibn_ratio_0_compute_torchvisions_outputs_bit_for_bit(norm, tv18, weights_file) -> None:
    model = build_model(_arch(norm, weights_file)).eval()
    assert model.inheritance.counts() == {"inherited": 20, "partly inherited": 0, "new": 0}
    assert model.inheritance.copied == model.inheritance.other  # every conv and the classifier
    if norm:
        assert isinstance(model.layer1[0].bn1, IBN) and model.layer1[0].bn1.num_in == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), tv18(x))


def test_ibn_a_half_takes_the_affine_of_all_channels_and_the_bn_parts_statistics(tv18, weights_file) -> None:
    model = build_model(_arch({"ibn": {"ratio": 0.5}}, weights_file))
    source = dict(tv18.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, IBN):
            bn, k = source[name], module.num_in
            assert k == module.num_channels // 2
            assert torch.equal(module.weight, bn.weight) and torch.equal(module.bias, bn.bias)
            assert torch.equal(module.running_mean, bn.running_mean[k:])
            assert torch.equal(module.running_var, bn.running_var[k:])
            assert model.inheritance.slots[name].status == "inherited"


def test_switchable_takes_affine_and_bn_statistics_ratios_as_documented(tv18, weights_file) -> None:
    source = dict(tv18.named_modules())
    for sn_init, expected in (("equal", [1 / 3] * 3), ("bn", [0.05, 0.05, 0.9])):
        model = build_model(_arch({"switchable": {}}))
        report = inherit(model, torch.load(weights_file), sn_init=sn_init)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, SwitchNorm2d)}
        assert len(layers) == 20  # every slot, the stem too
        for name, layer in layers.items():
            bn = source[name]
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(layer, tensor), getattr(bn, tensor)), (name, tensor)
            mean, var = layer.ratios()
            assert torch.allclose(mean, torch.tensor(expected)) and torch.allclose(var, mean)
            assert report.slots[name].status == "partly inherited"  # the ratios have no source


def test_group_norm_at_p2_and_instance_norm_take_the_affine(tv18, weights_file) -> None:
    model = build_model(_arch({"xbn": {"position": 2}, "overrides": {"layer4.1.bn2": "in"}}, weights_file))
    source = dict(tv18.named_modules())
    report = model.inheritance
    for name in ("bn1", "layer1.0.bn1", "layer3.1.bn1", "layer4.1.bn2"):
        module = model.get_submodule(name)
        assert isinstance(module, torch.nn.GroupNorm | torch.nn.InstanceNorm2d)
        assert torch.equal(module.weight, source[name].weight) and torch.equal(module.bias, source[name].bias)
        assert report.slots[name].status == "inherited" and "statistics dropped" in report.slots[name].detail
    assert report.counts() == {"inherited": 20, "partly inherited": 0, "new": 0}


def test_a_batchnorm_in_an_ibn_checkpoint_slot_takes_what_there_is() -> None:
    torch.manual_seed(0)
    mini = {"backbone": {"preset": "resnet-mini"}}
    ibn = build_model({**mini, "norm": {"ibn": {"ratio": 0.25, "stages": [1]}}})
    with torch.no_grad():
        ibn.layer1[0].bn1.running_mean.normal_()
        ibn.layer1[0].bn1.weight.normal_()
    bn = build_model(mini)
    report = inherit(bn, ibn.state_dict())
    source, target = ibn.layer1[0].bn1, bn.layer1[0].bn1
    assert torch.equal(target.weight, source.weight)
    assert torch.equal(target.running_mean[4:], source.running_mean)  # the BN part: channels 4-15
    assert torch.equal(target.running_mean[:4], torch.zeros(4))  # IN channels: estimated while fine-tuning
    assert report.slots["layer1.0.bn1"].status == "partly inherited"
    assert "channels 0-3 new" in report.slots["layer1.0.bn1"].detail


def test_inserted_selfnorm_starts_at_the_documented_gate_and_crossnorm_is_the_identity(weights_file) -> None:
    for form in ("tied", "two_branch"):
        norm = {"selfnorm": {"form": form, "stages": [4]}, "crossnorm": {"stages": [3]}}
        model = build_model(_arch(norm, weights_file))
        report = model.inheritance
        assert {
            report.slots[f"layer{s}.{b}.{k}"].status
            for s, k in ((3, "crossnorm"), (4, "selfnorm"))
            for b in (0, 1)
        } == {"new"}
        x = torch.randn(4, 512, 2, 2)
        for mode in ("train", "eval"):
            layer = getattr(model.layer4[0].selfnorm, mode)()
            assert torch.allclose(layer(x), SELFNORM_GATE * x, rtol=1e-6, atol=1e-6)


def test_strict_names_unused_and_missing_tensors_and_non_strict_lists_them(tv18, weights_file) -> None:
    state = tv18.state_dict()
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    del state["layer2.0.bn2.running_var"], state["layer3.0.conv2.weight"]
    with pytest.raises(
        NormsearchError, match=r"1 checkpoint tensor\(s\) unused: layer9.0.conv1.weight; 2 missing"
    ):
        inherit(build_model(_arch({})), state)
    report = inherit(build_model(_arch({})), state, strict=False)
    assert report.unused == ["layer9.0.conv1.weight"]
    assert report.missing == ["layer2.0.bn2.running_var", "layer3.0.conv2.weight"]
    assert report.slots["layer2.0.bn2"].status == "partly inherited"  # half the statistics: not copied
    mismatch = (
        r"unused: layer1.1.bn1.bias, .*; 19 missing.*: bn1.weight \(checkpoint \(64,\), model \(16,\)\)"
    )
    with pytest.raises(NormsearchError, match=mismatch):
        build_model({"backbone": {"preset": "resnet-mini", "weights": str(weights_file)}})


def test_plan_added_layers_are_new_and_checkpoint_added_layers_may_be_dropped(tmp_path) -> None:
    from normsearch.models import Checkpoint, save_checkpoint

    mini = ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"variant": "b"}}})
    path = save_checkpoint(
        Checkpoint(build_model(mini).state_dict(), "t", "normsearch", mini.to_dict()), tmp_path / "b.pt"
    )
    plain = build_model({"backbone": {"preset": "resnet-mini", "weights": str(path)}})  # strict: no error
    assert plain.inheritance.dropped == [f"layer{s}.0.post.{t}" for s in (1, 2) for t in ("bias", "weight")]
    back = build_model(
        {"backbone": {"preset": "resnet-mini", "weights": str(path)}, "norm": {"ibn": {"variant": "b"}}}
    )
    assert back.inheritance.counts() == {"inherited": 11, "partly inherited": 0, "new": 0}
    saved = torch.load(path)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in back.state_dict().items())


def test_plan_weights_prints_each_slot_and_bad_weights_are_one_line(
    tmp_path, monkeypatch, weights_file
) -> None:
    config = tmp_path / "arch.yaml"
    config.write_text(_arch({"ibn": {"ratio": 0.5}, "switchable": {"stages": [4]}}).to_yaml())
    runner = CliRunner()
    result = runner.invoke(app, ["plan", str(config), "--weights", str(weights_file)])
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert "inherited" in lines["layer1.0.bn1"] and "affine + statistics from bn" in lines["layer1.0.bn1"]
    assert "partly inherited" in lines["layer4.0.bn1"] and "ratios new (equal)" in lines["layer4.0.bn1"]
    assert "slots 15 inherited, 5 partly inherited, 0 new; other tensors 22/22 copied" in result.output
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("NORMSEARCH_OFFLINE", "1")
    for weights, expected in (
        ("IMAGENET1K_V7", "unknown weights 'IMAGENET1K_V7'"),
        ("DEFAULT", "resnet18-f37072fd.pth is not in the torch hub cache"),
    ):
        result = runner.invoke(app, ["plan", str(config), "--weights", weights])
        assert result.exit_code == 2 and expected in result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
