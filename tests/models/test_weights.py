"""Loading checkpoints: torchvision weights names through the hub cache, state_dict files in their common
wrappings, normsearch checkpoints, and the IBN-Net authors' released key names mapped onto our slots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from normsearch.arch import ArchConfig, Backbone
from normsearch.errors import NormsearchError
from normsearch.models import Checkpoint, build_model, load_weights, save_checkpoint

R18 = Backbone(preset="resnet18", num_classes=1000)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A torchvision resnet18 with non-trivial running statistics (two training forwards)."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
    return model.state_dict()


def test_a_weights_name_reads_the_hub_cache(tmp_path, monkeypatch, resnet18_state) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("NORMSEARCH_OFFLINE", "1")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18_state, cache / "resnet18-f37072fd.pth")  # the file name in ResNet18_Weights' url
    for name in ("IMAGENET1K_V1", "DEFAULT"):
        checkpoint = load_weights(name, R18)
        assert checkpoint.format == "torchvision"
        assert checkpoint.provenance["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
        assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in resnet18_state.items())


def test_offline_without_the_file_names_file_and_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("NORMSEARCH_OFFLINE", "1")
    with pytest.raises(NormsearchError) as error:
        load_weights("IMAGENET1K_V2", Backbone(preset="resnet50"))
    message = str(error.value)
    assert "\n" not in message
    assert "resnet50-11ad3fa6.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message


@pytest.mark.parametrize(
    ("weights", "backbone", "expected"),
    [
        (
            "IMAGENET1K_V9",
            R18,
            r"unknown weights 'IMAGENET1K_V9' for torchvision resnet18; allowed: IMAGENET1K_V1",
        ),
        ("DEFAULT", Backbone(preset="resnet-mini"), "need a torchvision network .* resnet-mini"),
        ("nowhere/r18.pth", R18, "nowhere/r18.pth: no such file"),
        ("r18.pth", R18, "r18.pth: no such file"),
    ],
)
def test_bad_weights_are_one_line(weights: str, backbone: Backbone, expected: str) -> None:
    with pytest.raises(NormsearchError, match=expected):
        load_weights(weights, backbone)


def test_state_dict_files_in_their_wrappings(tmp_path: Path, resnet18_state) -> None:
    wrapped = {
        "plain.pth": resnet18_state,
        "lightning.ckpt": {"state_dict": resnet18_state, "epoch": 3},
        "dataparallel.pt": {"model": {f"module.{k}": v for k, v in resnet18_state.items()}},
    }
    for name, payload in wrapped.items():
        torch.save(payload, tmp_path / name)
        checkpoint = load_weights(tmp_path / name)
        assert checkpoint.format == "state_dict" and set(checkpoint.state_dict) == set(resnet18_state), name
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NormsearchError, match=r"junk.pt: cannot read as a checkpoint"):
        load_weights(tmp_path / "junk.pt")
    torch.save({"a": torch.zeros(1), "b": "text"}, tmp_path / "mixed.pt")
    with pytest.raises(NormsearchError, match=r"mixed.pt: not a state_dict: 'b' is a str"):
        load_weights(tmp_path / "mixed.pt")


def test_a_normsearch_checkpoint_round_trips_with_its_arch_and_provenance(tmp_path: Path) -> None:
    arch = ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"variant": "b"}}})
    model = build_model(arch)
    state = model.state_dict()
    path = save_checkpoint(
        Checkpoint(state, "trained", "normsearch", arch.to_dict(), {"seed": 4}), tmp_path / "c.pt"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    loaded = load_weights(path)
    assert loaded.format == "normsearch" and loaded.provenance == {"seed": 4}
    assert ArchConfig.from_dict(loaded.arch) == arch
    assert loaded.added == {"layer1.0.post", "layer2.0.post"}  # IBN-b's after-addition INs
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())


def _released_ibn(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """`state` (torchvision resnet18 names) written with the IBN-Net release's key names
    (github.com/XingangPan/IBN-Net, ibnnet/resnet_ibn.py): IBN-a's `IBN(planes)` in bn1 of stages 1-3 keeps
    `IN` (the first int(planes/2) channels, affine, no statistics) and `BN` (the rest); IBN-b's stem norm is
    `InstanceNorm2d(64, affine=True)` and the last block of stages 1-2 has an `IN` after the addition."""
    out = dict(state)
    if variant == "a":
        for stage in (1, 2, 3):
            for block in (0, 1):
                slot = f"layer{stage}.{block}.bn1"
                half = out[f"{slot}.weight"].shape[0] // 2
                for name in ("weight", "bias"):
                    tensor = out.pop(f"{slot}.{name}")
                    out[f"{slot}.IN.{name}"], out[f"{slot}.BN.{name}"] = tensor[:half], tensor[half:]
                for name in ("running_mean", "running_var"):
                    out[f"{slot}.BN.{name}"] = out.pop(f"{slot}.{name}")[half:]
                out[f"{slot}.BN.num_batches_tracked"] = out.pop(f"{slot}.num_batches_tracked")
    else:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            del out[f"bn1.{name}"]
        for stage, channels in ((1, 64), (2, 128)):
            out[f"layer{stage}.1.IN.weight"] = torch.rand(channels) + 0.5
            out[f"layer{stage}.1.IN.bias"] = torch.randn(channels)
    return out


def test_released_ibn_a_keys_become_one_ibn_slot_that_computes_the_released_layer(resnet18_state) -> None:
    released = _released_ibn(resnet18_state, "a")
    checkpoint = load_weights(released)
    assert checkpoint.format == "ibn-net"
    arch = ArchConfig.from_dict(
        {"backbone": {"preset": "resnet18", "num_classes": 1000}, "norm": {"ibn": {}}}
    )
    model = build_model(arch, weights=checkpoint)
    assert model.inheritance.counts() == {"inherited": 20, "partly inherited": 0, "new": 0}
    slot = model.layer2.get_submodule("1").bn1
    x = torch.randn(3, 128, 8, 8)
    # The released forward, by hand: split, IN(affine) on the first half, BN on the rest, concatenate.
    inst, batch = nn.InstanceNorm2d(64, affine=True), nn.BatchNorm2d(64).eval()
    inst.load_state_dict(
        {
            k[len("layer2.1.bn1.IN.") :]: v
            for k, v in released.items()
            if ".bn1.IN." in k and k.startswith("layer2.1.")
        }
    )
    batch.load_state_dict(
        {k[len("layer2.1.bn1.BN.") :]: v for k, v in released.items() if k.startswith("layer2.1.bn1.BN.")}
    )
    slot.eval()
    with torch.no_grad():
        expected = torch.cat([inst(x[:, :64]), batch(x[:, 64:])], 1)
        assert torch.allclose(slot(x), expected, atol=1e-5)


def test_released_ibn_b_keys_map_the_after_addition_in_to_post(resnet18_state) -> None:
    released = _released_ibn(resnet18_state, "b")
    checkpoint = load_weights(released)
    assert checkpoint.added == {"layer1.1.post", "layer2.1.post"}
    arch = ArchConfig.from_dict(
        {"backbone": {"preset": "resnet18", "num_classes": 1000}, "norm": {"ibn": {"variant": "b"}}}
    )
    model = build_model(arch, weights=checkpoint)
    assert model.inheritance.counts()["inherited"] == 22  # 20 slots + the two after-addition INs
    assert torch.equal(model.layer1[1].post.weight, released["layer1.1.IN.weight"])
    assert torch.equal(model.bn1.bias, released["bn1.bias"])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_saved_checkpoint_reads_back_whole_in_the_format_its_name_says(tmp_path: Path, suffix: str) -> None:
    arch = ArchConfig(backbone=Backbone(preset="resnet-mini", num_classes=3))
    model = build_model(arch)
    provenance = {"trial": "t007", "policy": "adabn"}
    checkpoint = Checkpoint(model.state_dict(), "test", "normsearch", arch.model_dump(), provenance)
    path = save_checkpoint(checkpoint, tmp_path / f"w{suffix}")
    head = path.read_bytes()[:8]
    assert (head[:2] == b"PK") == (suffix == ".pt")  # torch's zip container, or safetensors' header length
    back = load_weights(path)
    assert back.format == "normsearch" and back.arch == arch.model_dump() and back.provenance == provenance
    assert back.state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(back.state_dict[k], v) for k, v in model.state_dict().items())
    rebuilt = build_model(ArchConfig.model_validate(back.arch))
    rebuilt.load_state_dict(back.state_dict)
