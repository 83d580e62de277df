"""DSON (Seo et al., ECCV 2020) against its equations: routing by domain labels in training, the branch
average at test, running statistics per domain, and inheritance from one BatchNorm into every branch."""

from __future__ import annotations

import pytest
import torch

from normsearch.errors import NormsearchError
from normsearch.norms import DSON, set_domains


def _branch(x, gamma, beta, w, bn_mean, bn_var, eps=1e-5):
    # mu = w mu_bn + (1 - w) mu_in; var = w var_bn + (1 - w) var_in (biased IN variance over H, W).
    mu_in = x.mean(dim=(2, 3), keepdim=True)
    var_in = ((x - mu_in) ** 2).mean(dim=(2, 3), keepdim=True)
    mu = w * bn_mean.view(1, -1, 1, 1) + (1 - w) * mu_in
    var = w * bn_var.view(1, -1, 1, 1) + (1 - w) * var_in
    return gamma.view(1, -1, 1, 1) * (x - mu) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1)


def _layer() -> DSON:
    layer = DSON(3, domains=2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [0.3, 1.5, -1.0]]))
        layer.bias.copy_(torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]]))
        layer.mix_weight.copy_(torch.tensor([0.25, 0.8]))
    return layer


def test_training_routes_each_image_through_its_domains_branch() -> None:
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64) * 2
    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    layer = _layer()
    set_domains(layer, labels)
    y = layer(x)
    for d, w in ((0, 0.25), (1, 0.8)):
        xd = x[labels == d]
        mean = xd.mean(dim=(0, 2, 3))
        var = ((xd - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
        expected = _branch(xd, layer.weight[d], layer.bias[d], w, mean, var)
        torch.testing.assert_close(y[labels == d], expected)
        # Running statistics: torch's convention (momentum 0.1, unbiased variance), domain d's images only.
        n = xd.numel() // 3
        torch.testing.assert_close(layer.running_mean[d], 0.1 * mean)
        torch.testing.assert_close(layer.running_var[d], 0.9 + 0.1 * var * n / (n - 1))


def test_eval_averages_the_domain_branches() -> None:
    layer = _layer()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 1.0]]))
        layer.running_var.copy_(torch.tensor([[1.5, 0.5, 2.0], [0.7, 3.0, 1.0]]))
    layer.eval()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    branches = [
        _branch(x, layer.weight[d], layer.bias[d], w, layer.running_mean[d], layer.running_var[d])
        for d, w in ((0, 0.25), (1, 0.8))
    ]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), (branches[0] + branches[1]) / 2)


def test_mixture_weight_is_clamped_to_the_unit_interval() -> None:
    layer = _layer()
    with torch.no_grad():
        layer.mix_weight.copy_(torch.tensor([1.7, -0.4]))
    layer.eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = (
        _branch(x, layer.weight[0], layer.bias[0], 1.0, layer.running_mean[0], layer.running_var[0])
        + _branch(x, layer.weight[1], layer.bias[1], 0.0, layer.running_mean[1], layer.running_var[1])
    ) / 2
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


def test_inherit_bn_copies_one_batchnorm_into_every_branch() -> None:
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    layer = DSON(3, domains=3, mix=1.0)
    layer.inherit_bn(bn.weight, bn.bias, bn.running_mean, bn.running_var)
    layer.eval(), bn.eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():  # every branch is the BatchNorm at w = 1, so their average is too
        torch.testing.assert_close(layer(x), bn(x))


def test_training_without_labels_is_a_clear_error() -> None:
    layer = DSON(3, domains=2)
    with pytest.raises(NormsearchError, match="domain labels"):
        layer(torch.randn(4, 3, 4, 4))
    set_domains(layer, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(NormsearchError, match=r"0\.\.1"):
        layer(torch.randn(4, 3, 4, 4))
    # One domain needs no labels: every image is domain 0.
    DSON(3, domains=1)(torch.randn(4, 3, 4, 4))


def test_training_gradients_equal_autograd_through_the_equations() -> None:
    x = (torch.randn(6, 3, 4, 5, dtype=torch.float64) * 2).requires_grad_(True)
    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    upstream = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    layer = _layer()
    set_domains(layer, labels)
    (layer(x) * upstream).sum().backward()
    fused = [x.grad.clone(), layer.weight.grad.clone(), layer.mix_weight.grad.clone()]
    x.grad = None
    reference = _layer()
    y = torch.empty_like(x)
    for d in (0, 1):
        xd = x[labels == d]
        mean = xd.mean(dim=(0, 2, 3))
        var = ((xd - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
        y[labels == d] = _branch(
            xd, reference.weight[d], reference.bias[d], reference.mix_weight[d], mean, var
        )
    (y * upstream).sum().backward()
    for got, want in zip(fused, [x.grad, reference.weight.grad, reference.mix_weight.grad], strict=True):
        torch.testing.assert_close(got, want)
