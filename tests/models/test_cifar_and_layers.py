"""The CNSN CIFAR presets, the small variants, the SE option and the BN-first IBN layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import normsearch
from normsearch.arch import ArchConfig
from normsearch.norms import make_norm
from normsearch.norms.ibn import BatchInstanceNorm


def test_bn_first_ibn_is_the_densenet_release() -> None:
    """densenet_ibn.py IBN(planes, 0.4): half = int(planes * (1 - 0.4)); BN(half) on the first channels,
    InstanceNorm2d(planes - half, affine=True) on the rest; split, normalize, concatenate."""
    torch.manual_seed(0)
    layer = make_norm("ibn:order=bn_in,ratio=0.4", 64)  # the one door builds the released split
    assert isinstance(layer, BatchInstanceNorm)
    assert (layer.BN.num_features, layer.IN.num_features) == (38, 26)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(4, 64, 5, 5) * 3 + 1
    for train in (True, False):
        layer.train(train)
        before = (layer.BN.running_mean.clone(), layer.BN.running_var.clone())
        bn, inst = x[:, :38], x[:, 38:]
        mean, var = (bn.mean((0, 2, 3)), bn.var((0, 2, 3), unbiased=False)) if train else before
        ref_bn = (bn - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
        ref_bn = ref_bn * layer.BN.weight[None, :, None, None] + layer.BN.bias[None, :, None, None]
        mu, sig = inst.mean((2, 3), keepdim=True), inst.var((2, 3), unbiased=False, keepdim=True)
        ref_in = (inst - mu) / torch.sqrt(sig + 1e-5) * layer.IN.weight[None, :, None, None]
        ref_in = ref_in + layer.IN.bias[None, :, None, None]
        torch.testing.assert_close(layer(x), torch.cat([ref_bn, ref_in], 1), rtol=1e-5, atol=1e-5)
    assert set(layer.state_dict()) == {
        "BN.weight",
        "BN.bias",
        "BN.running_mean",
        "BN.running_var",
        "BN.num_batches_tracked",
        "IN.weight",
        "IN.bias",
    }  # the released checkpoint layout (features...norm1.BN.*, norm1.IN.*)
    assert (
        isinstance(BatchInstanceNorm(8, ratio=0.0).BN, nn.BatchNorm2d)
        and BatchInstanceNorm(8, 1.0).BN is None
    )


def test_densenet_ibn_a_model_uses_the_released_split() -> None:
    model = normsearch.build_model({"backbone": {"preset": "densenet-bc-100"}, "norm": {"ibn": {}}})
    layer = model.features.denseblock1.denselayer4.norm1
    assert isinstance(layer, BatchInstanceNorm) and layer.half == int(60 * 0.6)
    assert isinstance(model.features.denseblock1.denselayer2.norm1, nn.BatchNorm2d)


def test_presets_build_at_32px_with_their_parameter_counts() -> None:
    expected = {
        "wrn-40-2": 2_243_546,
        "resnext29_32x4d": 4_775_754,
        "densenet-bc-100": 769_162 + 48,
        "allconvnet": 1_408_234,
        "densenet-mini": 310_026,
        "mobilenetv2-mini": 317_386,
    }
    for preset, params in expected.items():
        model = normsearch.build_model({"backbone": {"preset": preset}})
        assert sum(p.numel() for p in model.parameters()) == params, preset
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    s = ArchConfig.from_dict({"backbone": {"preset": "densenet-bc-100"}}).structure()
    assert [len(s.stage_units(i)) for i in (1, 2, 3)] == [16, 16, 16]  # k = 12, d = 100: 3 × 16 layers


def test_se_option_adds_squeeze_excitation_on_the_branch() -> None:
    plain = normsearch.build_model({"backbone": {"preset": "resnet-mini"}})
    se = normsearch.build_model({"backbone": {"preset": "resnet-mini", "se": True}, "norm": {"ibn": {}}})
    block = se.layer3[0]
    assert block.se.fc[0].weight.shape == (4, 64) and block.se.fc[2].weight.shape == (64, 4)  # reduction 16
    assert sum(p.numel() for p in se.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * (
        16 * 1 + 32 * 2 + 64 * 4
    )
    x = torch.randn(3, 64, 8, 8)
    gate = torch.sigmoid(block.se.fc[2](F.relu(block.se.fc[0](x.mean((2, 3))))))
    torch.testing.assert_close(block.se(x), x * gate[:, :, None, None])
