"""MixStyle (Zhou, Yang, Qiao and Xiang, "Domain Generalization with MixStyle", ICLR 2021, §3):
mix the channel-wise feature statistics of each instance with those of another one of the batch.

With μ(x), σ(x) the per-instance, per-channel mean and standard deviation over (H, W), a partner x̃ of x
and λ ~ Beta(α, α) drawn per instance::

    γ_mix = λ σ(x) + (1 − λ) σ(x̃)
    β_mix = λ μ(x) + (1 − λ) μ(x̃)
    MixStyle(x) = γ_mix (x − μ(x)) / σ(x) + β_mix

applied with probability `p` per forward pass, in training only (the identity in eval). The gradient does
not flow through μ and σ (the paper's and the release's detach). Defaults: p = 0.5, α = 0.1 (release).

Pairing (``mix``): ``random`` pairs by a random permutation of the batch; ``crossdomain`` takes each
instance's partner from another source domain, which needs the batch's domain labels (`norms.domains`).

Departures from the released code (KaiyangZhou/mixstyle-release, `mixstyle.py`), on purpose:
- all randomness (whether to fire, λ, partners) comes from the layer's own `torch.Generator` (`seed`),
  never from Python's `random` or the global torch RNG, so a run is reproducible and resumable;
- ``crossdomain`` is written for D ≥ 2 domains given by labels: the partners of domain k's instances are a
  random permutation of the other domains' instances (cycled when there are fewer of them). With two equal
  halves this is the release's pairing (each half shuffled against the other), which assumes the batch's
  two halves are two domains and takes no labels;
- σ uses the release's unbiased variance with ε = 1e-6 inside the square root (the paper writes the
  biased one); on a 1×1 map, where the release's unbiased variance is NaN, the biased one (0) is used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms.domains import checked_domains

MIXES = ("random", "crossdomain")
EPS = 1e-6  # the released eps inside the sqrt


def instance_stats(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel mean and std over (H, W), shaped (N, C, 1, 1); unbiased variance as
    released (biased on a single pixel, where the unbiased one is undefined)."""
    var, mu = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=int(x.shape[2] * x.shape[3] > 1))
    return mu, (var + eps).sqrt()


def mixstyle(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The MixStyle equations for given mixing weights `lam` (N,) and partners `partner` (N,) (indices)."""
    mu, sig = instance_stats(x, eps)
    mu, sig = mu.detach(), sig.detach()
    lam = lam.to(x.dtype).view(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[partner]
    sig_mix = lam * sig + (1 - lam) * sig[partner]
    # (x - mu) / sig * sig_mix + mu_mix as one (N, C)-sized scale and shift: one pass over the map.
    scale = sig_mix / sig
    return torch.addcmul(mu_mix - mu * scale, x, scale)


def crossdomain_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each instance, an instance of another domain: domain k's instances take a random permutation of
    the other domains' instances (cycled if those are fewer)."""
    partner = torch.empty(len(labels), dtype=torch.long)
    labels = labels.cpu()
    for k in labels.unique().tolist():
        own = (labels == k).nonzero().flatten()
        pool = (labels != k).nonzero().flatten()
        if len(pool) == 0:
            raise NormsearchError("mixstyle: mix=crossdomain needs a batch with two or more domains")
        pool = pool[torch.randperm(len(pool), generator=generator)]
        partner[own] = pool[torch.arange(len(own)) % len(pool)]
    return partner


class MixStyle(nn.Module):
    """MixStyle at one position; the identity in eval mode and while `p` does not fire."""

    uses_domains = True

    def __init__(
        self,
        num_channels: int,
        p: float = 0.5,
        alpha: float = 0.1,
        mix: str = "random",
        eps: float = EPS,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if mix not in MIXES:
            raise NormsearchError(f"mixstyle: mix must be one of {'|'.join(MIXES)}, got {mix!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise NormsearchError(f"mixstyle: p must be in [0, 1], got {p}")
        if float(alpha) <= 0.0:
            raise NormsearchError(f"mixstyle: alpha must be > 0, got {alpha}")
        self.num_channels = num_channels
        self.p = float(p)
        self.alpha = float(alpha)
        self.mix = mix
        self.eps = float(eps)
        self.domains: torch.Tensor | None = None
        self.generator = torch.Generator()
        self.seed(int(torch.randint(0, 2**62, (1,))) if seed is None else seed)

    def seed(self, seed: int) -> None:
        """Re-seed the layer's own random stream (firing, λ and partners)."""
        self.generator.manual_seed(int(seed))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, p={self.p}, alpha={self.alpha}, mix={self.mix}"

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This pass's (λ, partners), or None when the layer does not fire. Draw order (fire, λ, partners)
        is part of the seeded stream."""
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return None
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        lam = torch.from_numpy(rng.beta(self.alpha, self.alpha, size=batch)).float()
        if self.mix == "random":
            partner = torch.randperm(batch, generator=self.generator)
        else:
            partner = crossdomain_partners(checked_domains(self, batch, "mixstyle"), self.generator)
        return lam, partner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2:
            return x
        return self._mix(x)

    @float32_forward
    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        drawn = self.draw(x.shape[0])
        if drawn is None:
            return x
        return mixstyle(x, drawn[0].to(x.device), drawn[1].to(x.device), self.eps)
