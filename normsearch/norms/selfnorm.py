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
from torch.func import functional_call

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
        z = mu * self.weight[:, 0] + std * self.weight[:, 1]
        bn = self.bn
        if self.training and z.shape[0] == 1:
            z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            z = bn(z)
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
        units = {"g": self.g} if self.f is None else {"g": self.g, "f": self.f}
        names = [name for name, _ in self.named_parameters()]

        def scale_shift(stats: Stats, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # y = x·g + (f - g)·mu = (x - mu)·g + f·mu  (tied: f = g)
            mu, var = stats[0]
            std = (var * correction + self.eps).sqrt()
            gates = {}
            for key, unit in units.items():
                prefix = key + "."
                own = {
                    n.removeprefix(prefix): p
                    for n, p in zip(names, params, strict=True)
                    if n.startswith(prefix)
                }
                gates[key] = functional_call(unit, own, (mu, std))
            return gates["g"], gates.get("f", gates["g"]) * mu

        return stat_affine(x, scale_shift, tuple(self.parameters()))
