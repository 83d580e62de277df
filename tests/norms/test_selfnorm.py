from __future__ import annotations

import pytest
import torch

from normsearch.norms import make_norm


def _x(shape: tuple[int, ...] = (6, 4, 5, 5), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1


def _gate(
    weight: torch.Tensor, bn: torch.nn.BatchNorm1d, mu: torch.Tensor, std: torch.Tensor, training: bool
):
    z = weight[:, 0] * mu + weight[:, 1] * std
    if training:
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + bn.eps)
    else:
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    return torch.sigmoid(z * bn.weight + bn.bias)


def _stats(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """The released calc_ins_mean_std(x, eps=1e-12) of SelfNorm: sqrt(unbiased var + eps)."""
    flat = x.flatten(2)
    return flat.mean(-1), torch.sqrt(flat.var(-1, unbiased=True) + eps)


@pytest.mark.parametrize("training", [True, False])
def test_tied_form_is_x_times_gate(training: bool) -> None:
    layer = make_norm("selfnorm", 4).double()
    layer(_x(seed=1))  # move the running statistics off their initial values
    layer.train(training)
    x = _x()
    mu, std = _stats(x)
    g = _gate(layer.g.weight.detach(), layer.g.bn, mu, std, training)
    torch.testing.assert_close(layer(x), x * g[..., None, None])


@pytest.mark.parametrize("training", [True, False])
def test_two_branch_form_is_eq6(training: bool) -> None:
    layer = make_norm("selfnorm:form=two_branch", 4).double()
    layer(_x(seed=1))
    layer.train(training)
    x = _x()
    mu, std = _stats(x)
    g = _gate(layer.g.weight.detach(), layer.g.bn, mu, std, training)[..., None, None]
    f = _gate(layer.f.weight.detach(), layer.f.bn, mu, std, training)[..., None, None]
    mu, std = mu[..., None, None], std[..., None, None]
    # Eq. 6: sigma' (x - mu)/sigma + mu' with sigma' = g·sigma and mu' = f·mu.
    torch.testing.assert_close(layer(x), (g * std) * (x - mu) / std + f * mu)


def test_batch_of_one_and_one_by_one_maps_are_guarded() -> None:
    layer = make_norm("selfnorm:form=two_branch", 4).double().train()
    y = layer(_x((1, 4, 5, 5)))
    assert torch.isfinite(y).all()
    assert torch.isfinite(layer(_x((3, 4, 1, 1)))).all()


@pytest.mark.parametrize("spec", ["selfnorm", "selfnorm:form=two_branch"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(spec: str, training: bool) -> None:
    layer = make_norm(spec, 3).double()
    layer(_x((4, 3, 4, 4), seed=2))
    layer.train(training)
    x = _x((4, 3, 3, 3)).requires_grad_(True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *_: layer(inp), (x, *params))


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_eps_default_is_the_released_selfnorm_value_and_a_key(eps: float) -> None:
    spec = "selfnorm" if eps == 1e-12 else f"selfnorm:eps={eps}"
    layer = make_norm(spec, 4).double()
    assert layer.eps == eps
    x = _x() * 1e-3  # low variance, where the two values of eps differ most
    mu, std = _stats(x, eps)
    g = _gate(layer.g.weight.detach(), layer.g.bn, mu, std, True)
    torch.testing.assert_close(layer(x), x * g[..., None, None])
