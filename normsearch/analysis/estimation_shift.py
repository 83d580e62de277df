"""Estimation shift of a BN layer's population statistics (XBNBlock, Huang et al., CVPR 2022, §4.1-4.2).

A BN layer normalizes at inference with the population statistics it estimated during training (the
running mean mu_hat and variance sigma_hat^2). The *expected* population statistics on a test set S' are the
mean mu_tilde and variance sigma_tilde^2 of the layer's input over S' (Definition 1), and the estimation
shift magnitude is the L2 norm of their difference over channels (Definition 2):

    ESM_mu = || mu_hat - mu_tilde ||_2,      ESM_sigma = || sqrt(sigma_hat^2) - sqrt(sigma_tilde^2) ||_2.

Here S' is each target domain in turn (and the sources' test split, for the in-distribution baseline).
The input variance divides by count - 1, the convention in which torch's BatchNorm keeps `running_var`, so
a layer whose running statistics were computed on S' itself has a shift of exactly 0. A layer with running
statistics over only some channels (IBN: BN on the channels after the IN part) is compared on those.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class InputMoments:
    """Per-channel sums of a layer's input over every (image, position), accumulated batch by batch in
    float64, so that any number of images can be fed."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate an (N, C, H, W) (or (N, C)) input."""
        x = x.detach().double()
        flat = x.transpose(0, 1).flatten(1)
        total, squares = flat.sum(1), (flat * flat).sum(1)
        if self.total is None or self.squares is None:
            self.total, self.squares = total, squares
        else:
            self.total, self.squares = self.total + total, self.squares + squares
        self.count += flat.shape[1]

    def mean(self) -> torch.Tensor:
        assert self.total is not None, "no input was added"
        return self.total / self.count

    def var(self) -> torch.Tensor:
        """The unbiased variance per channel (count - 1, torch's `running_var` convention)."""
        assert self.total is not None and self.squares is not None, "no input was added"
        mean = self.mean()
        return ((self.squares - self.count * mean * mean) / max(self.count - 1, 1)).clamp_min(0.0)


def running_statistics(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A BN-like layer's estimated population statistics (running mean, running variance), or None for a
    layer without them (IN, GN, LN: batch-free normalizations estimate nothing)."""
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    if getattr(module, "track_running_stats", True) is False:
        return None
    if mean.dim() == 2:  # DSON: one row per source-domain branch; at test the branches are averaged
        mean, var = mean.mean(0), var.mean(0)
    return mean.detach().double().cpu(), var.detach().double().cpu()


def estimation_shift(
    running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> tuple[float, float]:
    """(ESM_mu, ESM_sigma) of Definition 2 between estimated and expected statistics. When the layer keeps
    statistics over fewer channels than its input has (IBN), the last ones are compared (IBN's BN part)."""
    k = running_mean.numel()
    mean, var = mean.double().cpu()[-k:], var.double().cpu()[-k:]
    esm_mu = torch.linalg.vector_norm(running_mean.double() - mean)
    esm_sigma = torch.linalg.vector_norm(running_var.double().clamp_min(0).sqrt() - var.clamp_min(0).sqrt())
    return float(esm_mu), float(esm_sigma) if math.isfinite(float(esm_sigma)) else float("nan")
