from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.norms import IBN, make_norm
from normsearch.norms.ibn import BatchInstanceNorm
from tests.norms.formulas import bn_stats, channel, in_stats, normalize


def _randomize_affine(layer: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))


def test_ratio_zero_is_batch_norm_exactly() -> None:
    x = torch.randn(6, 7, 5, 5) * 3 + 1
    ibn, bn = make_norm("ibn:ratio=0", 7), nn.BatchNorm2d(7)
    _randomize_affine(ibn, 1)
    _randomize_affine(bn, 1)
    for _ in range(2):
        assert torch.equal(ibn(x), bn(x))
    assert torch.equal(ibn.running_mean, bn.running_mean)
    assert torch.equal(ibn.running_var, bn.running_var)
    ibn.eval(), bn.eval()
    assert torch.equal(ibn(x), bn(x))


def test_ratio_one_is_instance_norm_exactly() -> None:
    x = torch.randn(6, 7, 5, 5) * 3 + 1
    ibn, inorm = make_norm("ibn:ratio=1", 7), nn.InstanceNorm2d(7, affine=True)
    _randomize_affine(ibn, 2)
    _randomize_affine(inorm, 2)
    assert torch.equal(ibn(x), inorm(x))
    ibn.eval(), inorm.eval()
    assert torch.equal(ibn(x), inorm(x))


@pytest.mark.parametrize(("channels", "ratio"), [(7, 0.25), (8, 0.25), (9, 0.5), (64, 0.3), (5, 0.1)])
def test_mixed_ratio_matches_hand_formula(channels: int, ratio: float) -> None:
    torch.manual_seed(3)
    x = torch.randn(8, channels, 6, 5, dtype=torch.float64) * 2 - 0.5
    layer = IBN(channels, ratio=ratio).double()
    _randomize_affine(layer, 3)
    k = math.floor(channels * ratio)
    assert layer.num_in == k
    gamma, beta = channel(layer.weight.detach()), channel(layer.bias.detach())

    # IBN-Net §3.2: IN(affine) on the first floor(C·ratio) channels, BN on the rest.
    m_in, v_in = in_stats(x)
    m_bn, v_bn = bn_stats(x)
    expected = (
        torch.where(
            torch.arange(channels).view(1, -1, 1, 1) < k, normalize(x, m_in, v_in), normalize(x, m_bn, v_bn)
        )
        * gamma
        + beta
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)

    # Running statistics of the BN channels follow torch's convention (unbiased var, momentum 0.1).
    count = x.shape[0] * x.shape[2] * x.shape[3]
    torch.testing.assert_close(layer.running_mean, 0.1 * m_bn.flatten()[k:])
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * v_bn.flatten()[k:] * count / (count - 1))

    layer.eval()
    rm = torch.cat([torch.zeros(k, dtype=x.dtype), layer.running_mean]).view(1, -1, 1, 1)
    rv = torch.cat([torch.ones(k, dtype=x.dtype), layer.running_var]).view(1, -1, 1, 1)
    expected_eval = (
        torch.where(
            torch.arange(channels).view(1, -1, 1, 1) < k, normalize(x, m_in, v_in), normalize(x, rm, rv)
        )
        * gamma
        + beta
    )
    torch.testing.assert_close(layer(x), expected_eval, rtol=1e-10, atol=1e-10)


def test_released_code_crash_case_works() -> None:
    # The released IBN crashed for ratio < 0.5; the paper's best ratio is 0.25 (Table 5).
    layer = make_norm("ibn:ratio=0.25", 63)
    assert layer(torch.randn(4, 63, 3, 3)).shape == (4, 63, 3, 3)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(training: bool) -> None:
    layer = IBN(5, ratio=0.4).double()
    _randomize_affine(layer, 4)
    layer.train()
    layer(torch.randn(4, 5, 3, 3, dtype=torch.float64))  # populate running statistics
    layer.train(training)
    x = torch.randn(3, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias)
    assert torch.autograd.gradcheck(lambda inp, *_: layer(inp), (x, *params))


def test_channel_order_is_a_spec_key_built_by_make_norm() -> None:
    """Both releases' IBN layers come out of the one door: ResNet's IN-first `IBN` (k = ⌊C·ratio⌋ IN
    channels) and DenseNet's BN-first split (h = int(C·(1-ratio)) BN channels; its default ratio 0.4)."""
    in_first = make_norm("ibn:ratio=0.3,order=in_bn", 10)
    assert type(in_first) is IBN and in_first.num_in == 3
    assert make_norm("ibn:ratio=0.3", 10).num_in == 3
    bn_first = make_norm("ibn:order=bn_in", 60)
    assert type(bn_first) is BatchInstanceNorm and bn_first.half == int(60 * (1 - 0.4))
    assert make_norm("ibn:order=bn_in,ratio=0.25", 8).IN.num_features == 2
    with pytest.raises(NormsearchError, match="order must be in_bn or bn_in, got 'in_in'"):
        make_norm("ibn:order=in_in", 8)
    with pytest.raises(NormsearchError, match=r"ratio must be in \[0, 1\]"):
        make_norm("ibn:order=bn_in,ratio=1.5", 8)
    with pytest.raises(NormsearchError, match="order must be in_bn or bn_in"):  # at load time, not at build
        ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}, "norm": {"default": "ibn:order=x"}})
