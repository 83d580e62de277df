"""Normalization formulas written out by hand from the papers, independently of the library."""

from __future__ import annotations

import torch


def normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (x - mean) / torch.sqrt(var + eps)


def in_stats(x: torch.Tensor, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (n, c) over (H, W), SN paper Eq. 2 with I_in."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=unbiased)
    return mean, var


def ln_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per n over (C, H, W), SN paper Eq. 2 with I_ln."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return mean, var


def bn_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per c over (N, H, W), SN paper Eq. 2 with I_bn."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return mean, var


def channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)
