"""MixStyle and DSU against their papers' equations written out by hand, and their seeded randomness."""

from __future__ import annotations

import pytest
import torch

from normsearch.errors import NormsearchError
from normsearch.norms import DSU, MixStyle, make_norm, set_domains
from normsearch.norms.mixstyle import crossdomain_partners


def _stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Per (n, c) over (H, W), unbiased as both releases: sum of squares / (HW - 1).
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    mu = flat.sum(-1) / (h * w)
    var = ((flat - mu[..., None]) ** 2).sum(-1) / (h * w - 1)
    return mu, torch.sqrt(var + eps)


def test_mixstyle_equals_the_equations_for_a_fixed_lambda_and_permutation() -> None:
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 2 + 1
    lam = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    mu, sig = _stats(x, 1e-6)
    expected = torch.empty_like(x)
    for i in range(4):
        j = int(perm[i])
        g = lam[i] * sig[i] + (1 - lam[i]) * sig[j]
        b = lam[i] * mu[i] + (1 - lam[i]) * mu[j]
        expected[i] = (
            g[:, None, None] * (x[i] - mu[i][:, None, None]) / sig[i][:, None, None] + b[:, None, None]
        )
    layer = MixStyle(3, p=1.0)
    layer.train()
    layer.draw = lambda batch: (lam, perm)  # the layer's own draw replaced by fixed values
    torch.testing.assert_close(layer(x), expected)


def test_mixstyle_draws_from_its_own_generator_and_is_identity_in_eval() -> None:
    x = torch.randn(6, 4, 5, 5)
    a, b = MixStyle(4, p=1.0, seed=7), MixStyle(4, p=1.0, seed=7)
    torch.manual_seed(0)
    ya = a(x)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(ya, b(x)) and not torch.equal(ya, x)
    a.eval()
    assert torch.equal(a(x), x)
    assert torch.equal(MixStyle(4, p=0.0)(x), x)


def test_mixstyle_gradient_does_not_flow_through_the_statistics() -> None:
    # With the statistics detached and lambda = 1 (own statistics), the layer is the identity map and its
    # Jacobian is the identity: the gradient equals the upstream one exactly.
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    layer = MixStyle(2, p=1.0)
    layer.draw = lambda batch: (torch.ones(batch, dtype=torch.float64), torch.tensor([1, 2, 0]))
    upstream = torch.randn_like(x)
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)


def test_crossdomain_partners_come_from_another_domain() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    partner = crossdomain_partners(labels, torch.Generator().manual_seed(0))
    assert (labels[partner] != labels).all()
    # Two equal halves: a bijection between them, as the release's pairing.
    halves = torch.tensor([0, 0, 0, 1, 1, 1])
    partner = crossdomain_partners(halves, torch.Generator().manual_seed(1))
    assert sorted(partner.tolist()) == list(range(6)) and (halves[partner] != halves).all()


def test_crossdomain_mixstyle_without_labels_is_a_clear_error() -> None:
    layer = make_norm("mixstyle:p=1.0,mix=crossdomain", 3)
    with pytest.raises(NormsearchError, match="domain labels"):
        layer(torch.randn(4, 3, 4, 4))
    set_domains(layer, torch.tensor([0, 0, 1]))
    with pytest.raises(NormsearchError, match="batch of 4"):
        layer(torch.randn(4, 3, 4, 4))


def test_dsu_equals_the_equations_for_a_fixed_noise_draw() -> None:
    x = torch.randn(5, 3, 4, 6, dtype=torch.float64) * 3 - 1
    e_mu, e_sig = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    eps = 1e-6
    mu, sig = _stats(x, eps)
    # The batch's spread of each statistic, per channel (unbiased over the 5 instances, as released).
    spread_mu = torch.sqrt(((mu - mu.mean(0)) ** 2).sum(0) / 4 + eps)
    spread_sig = torch.sqrt(((sig - sig.mean(0)) ** 2).sum(0) / 4 + eps)
    beta, gamma = mu + e_mu * spread_mu, sig + e_sig * spread_sig
    expected = (
        gamma[..., None, None] * (x - mu[..., None, None]) / sig[..., None, None] + beta[..., None, None]
    )
    layer = DSU(3, p=1.0)
    layer.draw = lambda batch, channels: (e_mu, e_sig)
    torch.testing.assert_close(layer(x), expected)


def test_dsu_noise_is_the_layers_own_seeded_stream() -> None:
    x = torch.randn(4, 3, 5, 5)
    a = DSU(3, p=1.0, seed=11)
    gen = torch.Generator().manual_seed(11)
    assert float(torch.rand((), generator=gen)) < 1.0  # the firing draw comes first
    e_mu, e_sig = torch.randn((4, 3), generator=gen), torch.randn((4, 3), generator=gen)
    b = DSU(3, p=1.0)
    b.draw = lambda batch, channels: (e_mu, e_sig)
    assert torch.equal(a(x), b(x))
    a.eval()
    assert torch.equal(a(x), x)


def test_dsu_gradient_flows_through_the_statistics_as_released() -> None:
    # The fused kernel's input gradient against autograd through the equations written out (float64).
    x = (torch.randn(4, 3, 5, 6, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    e_mu, e_sig = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    upstream = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    layer = DSU(3, p=1.0)
    layer.draw = lambda batch, channels: (e_mu, e_sig)
    (layer(x) * upstream).sum().backward()
    fused = x.grad.clone()
    x.grad = None
    eps = 1e-6
    mu, sig = x.mean(dim=(2, 3)), torch.sqrt(x.var(dim=(2, 3)) + eps)
    beta = mu + e_mu * torch.sqrt(mu.var(0) + eps)
    gamma = sig + e_sig * torch.sqrt(sig.var(0) + eps)
    y = gamma[..., None, None] * (x - mu[..., None, None]) / sig[..., None, None] + beta[..., None, None]
    (y * upstream).sum().backward()
    torch.testing.assert_close(fused, x.grad)
