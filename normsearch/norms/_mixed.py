"""Mixed-statistics normalization with a hand-written backward: the engine under IBN and SwitchNorm.

Every channel c normalizes with a mean and a variance that are weighted sums of three estimates
(Switchable Normalization, Luo et al., Eq. 3)::

    mu(n, c)  = wm[c, 0] mu_in(n, c) + wm[c, 1] mu_ln(n) + wm[c, 2] mu_bn(c)
    var(n, c) = wv[c, 0] v_in(n, c)  + wv[c, 1] v_ln(n)  + wv[c, 2] v_bn(c)
    y = gamma (x - mu) / sqrt(var + eps) + beta

with the LN and BN statistics derived from the IN statistics (SN Eq. 4), written in the numerically
stable law-of-total-variance form ``v_ln = mean_c v_in + mean_c (mu_in - mu_ln)^2`` (equal to Eq. 4).
IBN-Net is the special case of one-hot rows: IN for the first channels, BN for the rest.

Autograd through the eager formula keeps a dozen N·C·H·W intermediates; the backward below needs only
the centred input and (N, C) statistics, and costs four passes over the data.
"""

from __future__ import annotations

from typing import Any

import torch

from normsearch.norms._stats import centred_stats


class _MixedNorm(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        wm: torch.Tensor,
        wv: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        eps: float,
        in_correction: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c = x.shape[:2]
        xf = x.reshape(n, c, -1)
        length = xf.shape[-1]
        mu_in, d, ss = centred_stats(xf)
        v_in = ss * (in_correction / length)
        mu_ln = mu_in.mean(1, keepdim=True)
        v_ln = v_in.mean(1, keepdim=True) + (mu_in - mu_ln).square().mean(1, keepdim=True)
        use_batch = running_mean is None
        if use_batch:
            mu_bn = mu_in.mean(0, keepdim=True)
            v_bn = v_in.mean(0, keepdim=True) + (mu_in - mu_bn).square().mean(0, keepdim=True)
        else:
            mu_bn = running_mean.unsqueeze(0)
            v_bn = running_var.unsqueeze(0)
        mu = wm[:, 0] * mu_in + wm[:, 1] * mu_ln + wm[:, 2] * mu_bn
        var = wv[:, 0] * v_in + wv[:, 1] * v_ln + wv[:, 2] * v_bn
        r = (var + eps).rsqrt()
        scale = r * gamma
        # y = (x - mu) * scale + beta = d * scale + (mu_in - mu) * scale + beta
        shift = beta + (mu_in - mu) * scale
        # Computed in 4-D so that y is a fresh tensor, not a view (callers may apply in-place ReLU).
        y = torch.addcmul(shift[..., None, None], d.view(x.shape), scale[..., None, None])
        ctx.save_for_backward(d, wm, wv, gamma, r, mu, mu_in, mu_ln, mu_bn, v_in, v_ln, v_bn)
        ctx.use_batch = use_batch
        ctx.in_correction = in_correction
        ctx.mark_non_differentiable(mu_bn, v_bn)
        return y, mu_bn.detach().squeeze(0), v_bn.detach().squeeze(0)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, _gm: Any, _gv: Any) -> tuple[Any, ...]:  # type: ignore[override]
        d, wm, wv, gamma, r, mu, mu_in, mu_ln, mu_bn, v_in, v_ln, v_bn = ctx.saved_tensors
        n, c, length = d.shape
        g = gy.reshape(n, c, length)
        a = g.sum(-1)  # sum_hw g
        gd = torch.linalg.vecdot(g, d, dim=-1)  # sum_hw g (x - mu_in)
        b = r * (gd + (mu_in - mu) * a)  # sum_hw g * xhat
        dgamma = b.sum(0)
        dbeta = a.sum(0)
        dmu = -gamma * r * a
        dvar = -0.5 * gamma * r * r * b
        dwm = torch.stack([(dmu * mu_in).sum(0), (dmu * mu_ln).sum(0), (dmu * mu_bn).sum(0)], dim=1)
        dwv = torch.stack([(dvar * v_in).sum(0), (dvar * v_ln).sum(0), (dvar * v_bn).sum(0)], dim=1)
        # Through the mixing weights back to the IN statistics.
        dmu_in = wm[:, 0] * dmu
        dv_in = wv[:, 0] * dvar
        dmu_ln = (wm[:, 1] * dmu).sum(1, keepdim=True)
        dv_ln = (wv[:, 1] * dvar).sum(1, keepdim=True)
        dmu_in = dmu_in + dmu_ln / c + dv_ln * 2.0 * (mu_in - mu_ln) / c
        dv_in = dv_in + dv_ln / c
        if ctx.use_batch:
            dmu_bn = (wm[:, 2] * dmu).sum(0, keepdim=True)
            dv_bn = (wv[:, 2] * dvar).sum(0, keepdim=True)
            dmu_in = dmu_in + dmu_bn / n + dv_bn * 2.0 * (mu_in - mu_bn) / n
            dv_in = dv_in + dv_bn / n
        # mu_in = mean(x), v_in = correction * mean((x - mu_in)^2); d(v)/d(mu_in) vanishes.
        coef_d = dv_in * (2.0 * ctx.in_correction / length)
        gx = torch.addcmul((dmu_in / length).unsqueeze(-1), g, (gamma * r).unsqueeze(-1))
        gx.addcmul_(d, coef_d.unsqueeze(-1))
        return gx.view(gy.shape), dwm, dwv, dgamma, dbeta, None, None, None, None


def mixed_norm(
    x: torch.Tensor,
    wm: torch.Tensor,
    wv: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
    running: tuple[torch.Tensor, torch.Tensor] | None = None,
    in_correction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalize x (N, C, H, W) with per-channel mixtures of IN, LN and BN statistics.

    `wm`, `wv`: (C, 3) weights over [IN, LN, BN] for the mean and for the variance (SN Eq. 3).
    `running`: (mean, var) of the BN part for inference; None uses the batch (training).
    `in_correction`: factor applied to the IN variance (H·W / (H·W - 1) for the unbiased estimate
    that the released SN code uses); the LN and BN variances inherit it through Eq. 4.
    Returns ``(y, mu_bn, v_bn)``; the last two are the batch's BN statistics (detached) for running
    averages, or the running statistics themselves at inference.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    rm, rv = running if running is not None else (None, None)
    return _MixedNorm.apply(x, wm, wv, gamma, beta, rm, rv, eps, in_correction)
