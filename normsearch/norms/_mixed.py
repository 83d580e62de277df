"""Mixed-statistics normalization: the formula under IBN, SwitchNorm and Sparse SwitchNorm.

Every channel c normalizes with a mean and a variance that are weighted sums of three estimates
(Switchable Normalization, Luo et al., Eq. 3)::

    mu(n, c)  = wm[c, 0] mu_in(n, c) + wm[c, 1] mu_ln(n) + wm[c, 2] mu_bn(c)
    var(n, c) = wv[c, 0] v_in(n, c)  + wv[c, 1] v_ln(n)  + wv[c, 2] v_bn(c)
    y = gamma (x - mu) / sqrt(var + eps) + beta

with the LN and BN statistics derived from the IN statistics (SN Eq. 4), written in the numerically
stable law-of-total-variance form ``v_ln = mean_c v_in + mean_c (mu_in - mu_ln)^2`` (equal to Eq. 4).
IBN-Net is the special case of one-hot rows: IN for the first channels, BN for the rest.

In the form `stat_affine` applies, ``y = (x - mu_in)·S + T`` with ``S = gamma·r`` and
``T = beta + gamma·r·(mu_in - mu)``, ``r = (var + eps)^-1/2``: everything but the IN statistics is
(N, C)-sized, so autograd differentiates it and only the full-size steps are hand-written.
"""

from __future__ import annotations

import torch

from normsearch.norms._stats import Stats, stat_affine


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
    bn_stats: list[torch.Tensor] = []

    def scale_shift(
        stats: Stats, wm: torch.Tensor, wv: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu_in, v_in = stats[0]
        v_in = v_in * in_correction
        mu_ln = mu_in.mean(1, keepdim=True)
        v_ln = v_in.mean(1, keepdim=True) + (mu_in - mu_ln).square().mean(1, keepdim=True)
        if running is None:
            mu_bn = mu_in.mean(0, keepdim=True)
            v_bn = v_in.mean(0, keepdim=True) + (mu_in - mu_bn).square().mean(0, keepdim=True)
        else:
            mu_bn, v_bn = running[0].unsqueeze(0), running[1].unsqueeze(0)
        mu = wm[:, 0] * mu_in + wm[:, 1] * mu_ln + wm[:, 2] * mu_bn
        var = wv[:, 0] * v_in + wv[:, 1] * v_ln + wv[:, 2] * v_bn
        scale = (var + eps).rsqrt() * gamma
        bn_stats.extend((mu_bn.detach().squeeze(0), v_bn.detach().squeeze(0)))
        return scale, beta + (mu_in - mu) * scale

    y = stat_affine(x, scale_shift, (wm, wv, gamma, beta))
    return y, bn_stats[0], bn_stats[1]
