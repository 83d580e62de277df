"""DSON, domain-specific optimized normalization (Seo, Suh, Kim, Kim, Han and Han, "Learning to Optimize
Domain Specific Normalization for Domain Generalization", ECCV 2020, arXiv 1907.04275, §3).

One branch per source domain d = 0..D-1, each with its own BN running statistics, its own affine (γ_d, β_d)
and its own mixture weight w_d ∈ [0, 1] between batch and instance statistics::

    μ_d  = w_d μ_bn^d + (1 − w_d) μ_in          σ²_d = w_d σ²_bn^d + (1 − w_d) σ²_in
    y    = γ_d (x − μ_d) / sqrt(σ²_d + ε) + β_d

where μ_in, σ²_in are the instance's statistics over (H, W) and μ_bn^d, σ²_bn^d the statistics over the
images of domain d in the batch (training; the running averages of those at test). In training every
image goes through the branch of its own domain (the batch's domain labels, `norms.domains`); the BN
statistics of branch d are computed on domain d's images only, which the balanced batches always contain.

At test time (a target domain, none of the D) the D branches' outputs are averaged at every DSON layer, in
one forward pass. The paper instead feeds a test image through each of the D domain-specific networks and
averages their predictions (D passes); the per-layer average is our choice, named here, for a single pass
that every evaluation path (and `diagnose`) can run unchanged.

Other choices of ours where the paper leaves them open or differs: one mixture weight per domain per layer
(a scalar), initialised to 0.5 and kept in [0, 1] by clamping in the forward (the paper clips the weight
after each update; the forward is the same, the gradient is zero outside [0, 1]); BN running statistics
follow torch's BatchNorm (momentum 0.1, unbiased running variance). `inherit_bn` copies a pretrained
BatchNorm's affine and running statistics into every domain branch (the paper's ImageNet initialisation).
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._stats import stat_affine
from normsearch.norms.domains import checked_domains


class DSON(nn.Module):
    """Domain-specific BN+IN mixture: routed by domain labels in training, branch-averaged at test."""

    uses_domains = True

    def __init__(
        self, num_channels: int, domains: int = 2, eps: float = 1e-5, momentum: float = 0.1, mix: float = 0.5
    ) -> None:
        super().__init__()
        if domains < 1:
            raise NormsearchError(f"dson: domains must be >= 1, got {domains}")
        if not 0.0 <= float(mix) <= 1.0:
            raise NormsearchError(f"dson: mix (the initial BN weight) must be in [0, 1], got {mix}")
        self.num_channels = num_channels
        self.num_domains = int(domains)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(domains, num_channels))
        self.bias = nn.Parameter(torch.zeros(domains, num_channels))
        self.mix_weight = nn.Parameter(torch.full((domains,), float(mix)))
        self.register_buffer("running_mean", torch.zeros(domains, num_channels))
        self.register_buffer("running_var", torch.ones(domains, num_channels))
        self.domains: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"{self.num_channels}, domains={self.num_domains}, eps={self.eps}, momentum={self.momentum}"

    @torch.no_grad()
    def inherit_bn(
        self, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
    ) -> None:
        """Start every domain branch from one pretrained BatchNorm (affine and running statistics)."""
        self.weight.copy_(weight.expand_as(self.weight))
        self.bias.copy_(bias.expand_as(self.bias))
        self.running_mean.copy_(running_mean.expand_as(self.running_mean))
        self.running_var.copy_(running_var.expand_as(self.running_var))

    def branch_affine(
        self,
        d: int,
        mu_in: torch.Tensor,
        var_in: torch.Tensor,
        bn_mean: torch.Tensor,
        bn_var: torch.Tensor,
        params: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch d as a per-(image, channel) scale and shift: y = x·scale + shift (the equations above), from
        the images' IN statistics (M, C) and the BN statistics (C,) it normalizes with. `params`: (weight,
        bias, mix_weight) as `stat_affine` hands them to its function (default: the layer's own)."""
        weight, bias, mix = params if params is not None else (self.weight, self.bias, self.mix_weight)
        w = mix[d].clamp(0.0, 1.0)
        mu = w * bn_mean + (1 - w) * mu_in
        var = w * bn_var + (1 - w) * var_in
        scale = weight[d] * (var + self.eps).rsqrt()
        return scale, bias[d] - mu * scale

    @float32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Everything but the output is (N, C)-sized: a domain's BN statistics come from its images' IN
        # statistics (law of total variance), and `stat_affine` reads the map once for them and writes the
        # output as (x - mu_in)·S + T, with S and T from `_scale_shift` under autograd.
        labels = None
        if self.training:
            if self.num_domains == 1:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            else:
                labels = checked_domains(self, x.shape[0], "dson").to(x.device)
            if int(labels.min()) < 0 or int(labels.max()) >= self.num_domains:
                raise NormsearchError(f"dson: domain labels must be in 0..{self.num_domains - 1} (domains)")
        pixels = x.shape[2] * x.shape[3]
        return stat_affine(
            x,
            lambda stats, *params: self._scale_shift(stats[0], labels, pixels, params),
            (self.weight, self.bias, self.mix_weight),
        )

    def _scale_shift(
        self,
        stats: tuple[torch.Tensor, torch.Tensor],
        labels: torch.Tensor | None,
        pixels: int,
        params: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """S and T of y = (x - mu_in)·S + T: routed by `labels` in training, the branch average at test."""
        mu_in, var_in = stats
        if labels is None:
            # The average of D affine maps of x is the affine map with the averaged scale and shift.
            pairs = [
                self.branch_affine(d, mu_in, var_in, self.running_mean[d], self.running_var[d], params)
                for d in range(self.num_domains)
            ]
            scale = torch.stack([p[0] for p in pairs]).mean(0)
            shift = torch.stack([p[1] for p in pairs]).mean(0)
            return scale, shift + mu_in * scale
        scales, shifts, order = [], [], []
        for d in range(self.num_domains):
            index = (labels == d).nonzero().flatten()
            if len(index) == 0:
                continue
            m, v = mu_in.index_select(0, index), var_in.index_select(0, index)
            mean = m.mean(0)
            var = v.mean(0) + (m - mean).square().mean(0)  # biased, over the domain's (n, H, W)
            self._update_running(d, mean, var, len(index) * pixels)
            scale, shift = self.branch_affine(d, m, v, mean, var, params)
            scales.append(scale)
            shifts.append(shift + m * scale)
            order.append(index)
        inverse = torch.empty_like(labels)
        inverse[torch.cat(order)] = torch.arange(len(labels), device=labels.device)
        return torch.cat(scales).index_select(0, inverse), torch.cat(shifts).index_select(0, inverse)

    @torch.no_grad()
    def _update_running(self, d: int, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        unbiased = var * (count / (count - 1)) if count > 1 else var
        self.running_mean[d].lerp_(mean.detach(), self.momentum)
        self.running_var[d].lerp_(unbiased.detach(), self.momentum)
