"""Per-instance, per-channel statistics and affine maps, computed the fast way on CPU.

`torch.var_mean` over H·W uses a Welford kernel that costs more than a whole `nn.BatchNorm2d` training
step on CPU (measured: 12 ms against 11 ms on a (32, 64, 32, 32) tensor, one thread). A sum, one
subtraction and a batched dot product give the same two-pass, numerically stable statistics in a fifth
of the time. The two autograd Functions here keep autograd from storing the intermediates of those
formulas: each saves one full-size tensor and reduces with dot products in backward.
"""

from __future__ import annotations

from typing import Any

import torch


def centred_stats(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, centred tensor and sum of squares over the last axis of a (N, C, L) tensor.

    Returns ``(mu, d, ss)`` with ``mu = mean(x)`` (N, C), ``d = x - mu`` (N, C, L) and
    ``ss = sum(d**2)`` (N, C). Two passes (mean, then centred squares) avoid the cancellation of
    E[x²] - E[x]².
    """
    length = xf.shape[-1]
    mu = xf.sum(dim=-1) / length
    d = xf - mu.unsqueeze(-1)
    ss = torch.linalg.vecdot(d, d, dim=-1)
    return mu, d, ss


class _MeanStd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xf: torch.Tensor, eps: float, denom: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        mu, d, ss = centred_stats(xf)
        std = (ss / denom + eps).sqrt()
        ctx.save_for_backward(d, std)
        ctx.denom = denom
        return mu, std

    @staticmethod
    def backward(ctx: Any, gmu: torch.Tensor, gstd: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        d, std = ctx.saved_tensors
        length = d.shape[-1]
        # std = sqrt(sum(d^2)/denom + eps): dstd/dx = d / (std * denom); dmu/dx = 1/L.
        gx = torch.addcmul((gmu / length).unsqueeze(-1), d, (gstd / (std * ctx.denom)).unsqueeze(-1))
        return gx, None, None


class _ChannelAffine(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xf: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(xf, scale)
        return torch.addcmul(shift.unsqueeze(-1), xf, scale.unsqueeze(-1))

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xf, scale = ctx.saved_tensors
        gx = gy * scale.unsqueeze(-1) if ctx.needs_input_grad[0] else None
        gscale = torch.linalg.vecdot(gy, xf, dim=-1) if ctx.needs_input_grad[1] else None
        gshift = gy.sum(-1) if ctx.needs_input_grad[2] else None
        return gx, gscale, gshift


def instance_mean_std(
    x: torch.Tensor, eps: float, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable channel-wise mean and std of each instance: (N, C) each, std = sqrt(var + eps).

    With `unbiased` the variance divides by H·W - 1 (as the CrossNorm/SelfNorm code does), falling
    back to H·W on 1×1 maps, where the unbiased variance is undefined (the released code returns NaN).
    """
    n, c = x.shape[:2]
    xf = x.reshape(n, c, -1)
    length = xf.shape[-1]
    denom = length - 1 if (unbiased and length > 1) else length
    return _MeanStd.apply(xf, eps, denom)


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """y[n, c] = x[n, c] · scale[n, c] + shift[n, c] for x (N, C, H, W) and per-instance (N, C) maps."""
    n, c = x.shape[:2]
    return _ChannelAffine.apply(x.reshape(n, c, -1), scale, shift).view_as(x)
