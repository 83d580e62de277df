"""Feature divergence (IBN-Net §4.3, Eq. 1-3) on constructed activations, against the closed form."""

from __future__ import annotations

import math

import pytest
import torch

from normsearch.analysis.divergence import EPS, channel_means, feature_divergence, symmetric_kl


def exact(n: int, c: int, mean: torch.Tensor, std: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(n, c) samples whose per-channel mean and (biased) std are exactly `mean` and `std`."""
    z = torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, unbiased=False)
    return z * std + mean


def test_identical_domains_have_divergence_zero() -> None:
    features = exact(200, 8, torch.linspace(-1, 1, 8, dtype=torch.float64), torch.full((8,), 0.5))
    assert feature_divergence(features, features.clone()) == pytest.approx(0.0, abs=1e-12)
    maps = torch.randn(50, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    assert feature_divergence(maps, maps) == pytest.approx(0.0, abs=1e-12)


def test_shifted_gaussian_means_give_the_closed_form() -> None:
    # Equal variances: D = 2 (s^2 + d^2) / (2 s^2) - 1 = d^2 / s^2 per channel (eps added to s^2).
    c = 6
    std = torch.linspace(0.5, 2.0, c, dtype=torch.float64)
    shift = torch.linspace(0.1, 1.5, c, dtype=torch.float64)
    a = exact(300, c, torch.zeros(c, dtype=torch.float64), std, seed=2)
    b = exact(400, c, shift, std, seed=3)
    expected = float((shift**2 / (std**2 + EPS)).mean())
    assert feature_divergence(a, b) == pytest.approx(expected, rel=1e-9)


def test_unequal_variances_follow_eq_2_in_both_directions() -> None:
    mu_a, mu_b, s_a, s_b = 0.3, -0.7, 0.8, 1.9
    a = exact(500, 1, torch.tensor([mu_a], dtype=torch.float64), torch.tensor([s_a], dtype=torch.float64))
    b = exact(500, 1, torch.tensor([mu_b], dtype=torch.float64), torch.tensor([s_b], dtype=torch.float64), 4)

    def kl(m1: float, v1: float, m2: float, v2: float) -> float:  # Eq. 2 as printed
        return math.log(math.sqrt(v2) / math.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5

    va, vb = s_a**2 + EPS, s_b**2 + EPS
    expected = kl(mu_a, va, mu_b, vb) + kl(mu_b, vb, mu_a, va)
    assert feature_divergence(a, b) == pytest.approx(expected, rel=1e-9)
    assert feature_divergence(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric (Eq. 1)


def test_channel_means_average_over_space_and_a_constant_channel_adds_nothing() -> None:
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(channel_means(maps), maps.double().flatten(2).mean(2))
    # An instance-normalized channel's spatial mean is its bias for every image: zero variance both sides.
    constant = torch.full((40, 2), 0.25, dtype=torch.float64)
    mu, var = constant.mean(0), constant.var(0, unbiased=False)
    assert float(symmetric_kl(mu, var, mu, var).abs().max()) == 0.0
    assert feature_divergence(constant, constant + 0.0) == 0.0
