"""DSU, Domain Shifts with Uncertainty (Li, Dai, Ge, Liu, Shan and Duan, "Uncertainty Modeling for
Out-of-Distribution Generalization", ICLR 2022, §3.2): re-sample each instance's feature statistics from
a Gaussian around them whose spread is the batch's spread of those statistics.

With μ(x), σ(x) the per-instance, per-channel mean and standard deviation over (H, W) (shape (B, C))::

    Σ_μ²(x) = var_b μ(x)              Σ_σ²(x) = var_b σ(x)          (the uncertainty, per channel)
    β(x) = μ(x) + ε_μ Σ_μ(x)          γ(x) = σ(x) + ε_σ Σ_σ(x)      ε_μ, ε_σ ~ N(0, 1), shape (B, C)
    DSU(x) = γ(x) (x − μ(x)) / σ(x) + β(x)

applied with probability `p` per forward pass (default 0.5, the release's), in training only (the identity
in eval). Unlike MixStyle, the gradient flows through μ and σ (as released).

Departures from the released code (lixiaotong97/DSU, `DistributionUncertainty`), on purpose:
- the firing draw and the noise ε come from the layer's own `torch.Generator` (`seed`), never from
  `np.random` or the global torch RNG, so a run is reproducible and resumable;
- as released, both variances (over (H, W) and over the batch) are the unbiased ones with ε = 1e-6 inside
  the square roots; where a variance is undefined (a 1×1 map, a batch of one) the biased one (0) is used
  instead of NaN, and a batch of one is left unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._stats import Stats, stat_affine

EPS = 1e-6  # the released eps inside the square roots


def dsu(x: torch.Tensor, noise_mu: torch.Tensor, noise_sigma: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The DSU equations for given standard-normal draws `noise_mu`, `noise_sigma` of shape (B, C)."""
    b = x.shape[0]
    hw = x.shape[2] * x.shape[3]
    correction = hw / (hw - 1) if hw > 1 else 1.0  # the released unbiased variance over (H, W)

    def scale_shift(stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
        # (x - mu) / sig · gamma + beta = (x - mu)·S + T with S = gamma / sig, T = beta; autograd
        # differentiates through mu and sig (as released), on (B, C) tensors only (`stat_affine`).
        mu, var = stats[0]
        sig = (var * correction + eps).sqrt()
        spread_mu = (mu.var(dim=0, keepdim=True, unbiased=b > 1) + eps).sqrt()
        spread_sig = (sig.var(dim=0, keepdim=True, unbiased=b > 1) + eps).sqrt()
        beta = mu + noise_mu.to(mu) * spread_mu
        gamma = sig + noise_sigma.to(mu) * spread_sig
        return gamma / sig, beta

    return stat_affine(x, scale_shift)


class DSU(nn.Module):
    """DSU at one position; the identity in eval mode and while `p` does not fire."""

    def __init__(self, num_channels: int, p: float = 0.5, eps: float = EPS, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise NormsearchError(f"dsu: p must be in [0, 1], got {p}")
        self.num_channels = num_channels
        self.p = float(p)
        self.eps = float(eps)
        self.generator = torch.Generator()
        self.seed(int(torch.randint(0, 2**62, (1,))) if seed is None else seed)

    def seed(self, seed: int) -> None:
        """Re-seed the layer's own random stream (firing and noise)."""
        self.generator.manual_seed(int(seed))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, p={self.p}"

    def draw(self, batch: int, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This pass's (ε_μ, ε_σ), or None when the layer does not fire (draw order: fire, ε_μ, ε_σ)."""
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return None
        noise_mu = torch.randn((batch, channels), generator=self.generator)
        return noise_mu, torch.randn((batch, channels), generator=self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2:
            return x
        return self._perturb(x)

    @float32_forward
    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        drawn = self.draw(x.shape[0], x.shape[1])
        if drawn is None:
            return x
        return dsu(x, drawn[0].to(x.device), drawn[1].to(x.device), self.eps)
