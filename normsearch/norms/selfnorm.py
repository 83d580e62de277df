"""SelfNorm (Tang et al., "CrossNorm and SelfNorm for Generalization under Distribution Shifts",
ICCV 2021, §3.3, Eq. 6): recalibrate each channel's style with attention on its own mean and std.

An attention unit per channel: a per-channel linear map (no bias) of [mu, sigma] -> BatchNorm1d ->
sigmoid. Two forms:

- ``tied`` (the released code): one unit g, ``y = x · g``.
- ``two_branch`` (the paper's Eq. 6): sigma' = g·sigma and mu' = f·mu, so
  ``y = sigma' (x - mu) / sigma + mu' = g·x + (f - g)·mu``.

sigma = sqrt(unbiased var + eps) with eps = 1e-12 as released (`models/cnsn.py` calls
``calc_ins_mean_std(x, eps=1e-12)`` in SelfNorm; 1e-5 is the CrossNorm value); ``eps`` is a key.
Departures, on purpose: a batch of one in training uses the BatchNorm1d's running statistics instead of
raising, and 1×1 maps use the biased variance instead of returning NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._stats import Stats, stat_affine

FORMS = ("tied", "two_branch")
STD_EPS = 1e-12  # the released SelfNorm's eps inside the sqrt


class _Attention(nn.Module):
    """sigmoid(BN1d(w_mu · mu + w_sigma · sigma)) per channel: the released Conv1d(C, C, 2, groups=C)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_channels, 2))
        bound = 1.0 / math.sqrt(2.0)  # Conv1d's default init for fan_in = 2
        nn.init.uniform_(self.weight, -bound, bound)
        self.bn = nn.BatchNorm1d(num_channels)

    def forward(self, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return self.gate(mu, std, self.weight, self.bn.weight, self.bn.bias)

    def gate(
        self,
        mu: torch.Tensor,
        std: torch.Tensor,
        weight: torch.Tensor,
        bn_weight: torch.Tensor,
        bn_bias: torch.Tensor,
    ) -> torch.Tensor:
        """The unit on given parameter tensors (so that a caller can differentiate through copies of them);
        the BatchNorm1d's running statistics update as `nn.BatchNorm1d` would update them."""
        z = mu * weight[:, 0] + std * weight[:, 1]
        bn = self.bn
        use_batch = self.training and z.shape[0] > 1  # a batch of one: the running statistics
        factor = 0.0
        if use_batch:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn_weight, bn_bias, use_batch, factor, bn.eps)
        return torch.sigmoid(z)


class SelfNorm(nn.Module):
    """Style recalibration by self-gating; learns in training and acts in training and test."""

    def __init__(self, num_channels: int, form: str = "tied", eps: float = STD_EPS) -> None:
        super().__init__()
        if form not in FORMS:
            raise NormsearchError(f"selfnorm: form must be one of {'|'.join(FORMS)}, got {form!r}")
        if not float(eps) >= 0.0:
            raise NormsearchError(f"selfnorm: eps must be >= 0, got {eps}")
        self.num_channels = num_channels
        self.form = form
        self.eps = float(eps)
        self.g = _Attention(num_channels)
        self.f = _Attention(num_channels) if form == "two_branch" else None

    def extra_repr(self) -> str:
        return f"{self.num_channels}, form={self.form}, eps={self.eps}"

    @float32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[2] * x.shape[3]
        correction = length / (length - 1) if length > 1 else 1.0
        units = [self.g] if self.f is None else [self.g, self.f]

        def scale_shift(stats: Stats, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # y = x·g + (f - g)·mu = (x - mu)·g + f·mu  (tied: f = g); params: 3 tensors per unit
            mu, var = stats[0]
            std = (var * correction + self.eps).sqrt()
            gates = [unit.gate(mu, std, *params[3 * i : 3 * i + 3]) for i, unit in enumerate(units)]
            return gates[0], gates[-1] * mu

        params = [t for unit in units for t in (unit.weight, unit.bn.weight, unit.bn.bias)]
        return stat_affine(x, scale_shift, params)
