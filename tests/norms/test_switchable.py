from __future__ import annotations

import pytest
import torch
from torch import nn

from normsearch.norms import SwitchNorm2d, make_norm
from tests.norms.formulas import bn_stats, channel, in_stats, ln_stats, normalize

STATS = ("in", "ln", "bn")


def _x(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, 5, 4, generator=gen, dtype=dtype) * 2 + 0.7


def _affine(layer: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen, dtype=layer.weight.dtype) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=layer.bias.dtype))


def _reference(kind: str, channels: int) -> nn.Module:
    return {
        "bn": nn.BatchNorm2d(channels),
        "in": nn.InstanceNorm2d(channels, affine=True),
        "ln": nn.GroupNorm(1, channels),
    }[kind].double()


@pytest.mark.parametrize("kind", STATS)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_one_hot_weights_equal_bn_in_ln(kind: str, mode: str) -> None:
    x = _x()
    sn = make_norm(f"sn:unbiased=false,mode={mode},mean={kind},var={kind}", 8).double()
    if mode == "soft":  # soft layer with (numerically) one-hot softmax weights
        with torch.no_grad():
            for w in (sn.mean_weight, sn.var_weight):
                w.copy_(torch.full((3,), -200.0, dtype=w.dtype))
                w[STATS.index(kind)] = 200.0
    ref = _reference(kind, 8)
    _affine(sn), _affine(ref)
    for _ in range(3):
        torch.testing.assert_close(sn(x), ref(x), rtol=1e-9, atol=1e-9)
    if kind == "bn":
        torch.testing.assert_close(sn.running_mean, ref.running_mean)
        torch.testing.assert_close(sn.running_var, ref.running_var)
    sn.eval(), ref.eval()
    torch.testing.assert_close(sn(x), ref(x), rtol=1e-9, atol=1e-9)


def _set_ratios(sn: SwitchNorm2d, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sn.mean_weight.copy_(torch.randn(3, generator=gen, dtype=sn.mean_weight.dtype))
        sn.var_weight.copy_(torch.randn(3, generator=gen, dtype=sn.var_weight.dtype))
    wm = torch.exp(sn.mean_weight.detach()) / torch.exp(sn.mean_weight.detach()).sum()
    wv = torch.exp(sn.var_weight.detach()) / torch.exp(sn.var_weight.detach()).sum()
    return wm, wv


def test_soft_layer_matches_eq3_with_directly_computed_statistics() -> None:
    # Eq. 2 computed directly over each pixel set, mixed by Eq. 3 with softmax ratios (Eq. 5).
    x = _x(2)
    sn = SwitchNorm2d(8, unbiased=False).double()
    _affine(sn)
    wm, wv = _set_ratios(sn, 5)
    stats = [in_stats(x), ln_stats(x), bn_stats(x)]
    mean = sum(w * s[0] for w, s in zip(wm, stats, strict=True))
    var = sum(w * s[1] for w, s in zip(wv, stats, strict=True))
    expected = normalize(x, mean, var) * channel(sn.weight.detach()) + channel(sn.bias.detach())
    torch.testing.assert_close(sn(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sn.running_mean, 0.1 * stats[2][0].flatten())


def test_unbiased_default_follows_released_code() -> None:
    # The released code: unbiased IN variance, then Eq. 4 for LN and BN from it.
    x = _x(3)
    sn = SwitchNorm2d(8).double()
    assert sn.unbiased
    _affine(sn)
    wm, wv = _set_ratios(sn, 6)
    m_in, v_in = in_stats(x, unbiased=True)
    temp = v_in + m_in**2
    m_ln = m_in.mean(1, keepdim=True)
    v_ln = temp.mean(1, keepdim=True) - m_ln**2
    m_bn = m_in.mean(0, keepdim=True)
    v_bn = temp.mean(0, keepdim=True) - m_bn**2
    mean = wm[0] * m_in + wm[1] * m_ln + wm[2] * m_bn
    var = wv[0] * v_in + wv[1] * v_ln + wv[2] * v_bn
    expected = normalize(x, mean, var) * channel(sn.weight.detach()) + channel(sn.bias.detach())
    torch.testing.assert_close(sn(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sn.running_var, 0.9 + 0.1 * v_bn.flatten())
    # Eval: IN and LN from the sample, BN from the running statistics.
    sn.eval()
    rm, rv = channel(sn.running_mean), channel(sn.running_var)
    mean = wm[0] * m_in + wm[1] * m_ln + wm[2] * rm
    var = wv[0] * v_in + wv[1] * v_ln + wv[2] * rv
    expected = normalize(x, mean, var) * channel(sn.weight.detach()) + channel(sn.bias.detach())
    torch.testing.assert_close(sn(x), expected, rtol=1e-10, atol=1e-10)


def test_initial_state_matches_paper_and_torch_conventions() -> None:
    sn = make_norm("sn", 4)
    assert torch.equal(sn.mean_weight, torch.ones(3)) and torch.equal(sn.var_weight, torch.ones(3))
    assert sn.momentum == 0.1 and torch.equal(sn.running_var, torch.ones(4))
    assert sum(p.numel() for name, p in sn.named_parameters() if "_weight" in name) == 6
    assert torch.equal(make_norm("sn:last_gamma=true", 4).weight, torch.zeros(4))


def test_to_hard_takes_argmax_and_keeps_state() -> None:
    sn = SwitchNorm2d(8)
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([0.1, 2.0, 0.3]))
        sn.var_weight.copy_(torch.tensor([3.0, 0.0, 1.0]))
    sn(_x(0, torch.float32))
    hard = sn.to_hard()
    assert (hard.mode, hard.mean_choice, hard.var_choice) == ("hard", "ln", "in")
    assert torch.equal(hard.running_mean, sn.running_mean) and torch.equal(hard.weight, sn.weight)
    assert not any("mean_weight" in name for name, _ in hard.named_parameters())


@pytest.mark.parametrize("unbiased", [True, False])
def test_folded_hard_bn_equals_unfolded_at_inference(unbiased: bool) -> None:
    sn = make_norm(f"sn:mode=hard,mean=bn,var=bn,unbiased={str(unbiased).lower()}", 8).double()
    _affine(sn)
    for seed in range(3):
        sn(_x(seed))
    sn.eval()
    folded = sn.fold().double()
    x = _x(9)
    torch.testing.assert_close(folded(x), sn(x), rtol=1e-12, atol=1e-12)
    scale = sn.weight.detach() / torch.sqrt(sn.running_var + sn.eps)
    torch.testing.assert_close(
        folded(x), x * channel(scale) + channel(sn.bias.detach() - sn.running_mean * scale)
    )


def test_fold_refuses_layers_that_are_not_affine() -> None:
    from normsearch.errors import NormsearchError

    with pytest.raises(NormsearchError, match="only a hard layer with mean=bn and var=bn"):
        make_norm("sn:mode=hard,mean=in,var=bn", 4).fold()


@pytest.mark.parametrize(
    "spec", ["sn", "sn:unbiased=false", "sn:mode=hard,mean=in,var=bn", "sn:mode=hard,mean=ln,var=ln"]
)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(spec: str, training: bool) -> None:
    sn = make_norm(spec, 5).double()
    _affine(sn)
    if sn.mode == "soft":
        _set_ratios(sn, 7)
    sn(torch.randn(4, 5, 3, 3, dtype=torch.float64))
    sn.train(training)
    x = torch.randn(3, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(p for p in sn.parameters())
    assert torch.autograd.gradcheck(lambda inp, *_: sn(inp), (x, *params))
