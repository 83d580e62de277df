"""Estimation shift (XBNBlock §4.2, Definition 2) on constructed activations and real BN layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normsearch.analysis.estimation_shift import InputMoments, estimation_shift, running_statistics
from normsearch.norms import make_norm


def fitted(layer: nn.Module, x: torch.Tensor) -> nn.Module:
    """`layer` with running statistics estimated from exactly `x` (one batch, cumulative average)."""
    layer.momentum = None
    layer.train()
    with torch.no_grad():
        layer(x)
    return layer.eval()


def moments(x: torch.Tensor) -> InputMoments:
    m = InputMoments()
    for part in x.split(7):  # batch by batch, as diagnose feeds it
        m.add(part)
    return m


def test_statistics_estimated_on_the_same_input_give_shift_zero() -> None:
    x = torch.randn(32, 5, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 + 1
    bn = fitted(nn.BatchNorm2d(5), x)
    m = moments(x)
    mu, sigma = estimation_shift(*running_statistics(bn), m.mean(), m.var())
    assert mu == pytest.approx(0.0, abs=1e-5) and sigma == pytest.approx(0.0, abs=1e-5)


def test_shifted_and_scaled_input_gives_the_closed_form() -> None:
    c = 4
    x = torch.randn(64, c, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bn = fitted(nn.BatchNorm2d(c).double(), x)
    delta = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    shifted = (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + (mean + delta).view(1, -1, 1, 1)
    m = moments(shifted)
    mu, sigma = estimation_shift(*running_statistics(bn), m.mean(), m.var())
    # ESM_mu = ||delta||; ESM_sigma = ||sqrt(var) - scale * sqrt(var)||.
    assert mu == pytest.approx(float(delta.norm()), rel=1e-9)
    assert sigma == pytest.approx(float((var.sqrt() * (1 - scale)).norm()), rel=1e-9)
    assert math.isclose(float(m.var()[1] / var[1]), 4.0, rel_tol=1e-9)


def test_ibn_compares_its_bn_channels_and_batch_free_layers_have_none() -> None:
    x = torch.randn(16, 8, 4, 4, generator=torch.Generator().manual_seed(2))
    ibn = fitted(make_norm("ibn:ratio=0.5", 8), x)
    stats = running_statistics(ibn)
    assert stats is not None and stats[0].numel() == 4  # BN on the last 4 channels
    m = moments(x)
    assert estimation_shift(*stats, m.mean(), m.var())[0] == pytest.approx(0.0, abs=1e-5)
    moved = x.clone()
    moved[:, :4] += 10.0  # the IN channels: no population statistics, so no shift
    m = moments(moved)
    assert estimation_shift(*stats, m.mean(), m.var())[0] == pytest.approx(0.0, abs=1e-5)
    for spec in ("in", "gn:groups=2", "ln"):
        assert running_statistics(make_norm(spec, 8)) is None
