"""CrossNorm (Tang et al., "CrossNorm and SelfNorm for Generalization under Distribution Shifts",
ICCV 2021, §3.2, Eq. 2-5): exchange channel-wise mean and std between feature maps during training.

For a feature map A restyled with the statistics of a partner B (Eq. 2)::

    A' = sigma_B (A - mu_A) / sigma_A + mu_B,  sigma = sqrt(unbiased var + 1e-5) as released

- ``mode=2ins`` pairs each instance with another one of the batch, channel by channel (Eq. 4).
- ``mode=1ins`` pairs channels of the same instance (Eq. 3; absent from the released code).
- ``crop`` (Eq. 5): ``style`` takes B's statistics from a box, ``content`` restyles only a box of A,
  ``both`` does both; each box covers an area ratio of at least `threshold`, its ratio drawn from
  Beta(beta, beta).

The layer is the identity in eval mode and while ``active`` is False; `CrossNormPolicy` switches layers
on per training iteration as the paper does. Departures from the released code, on purpose: all
randomness comes from a `torch.Generator` owned by the layer (`seed(...)`), never from the global RNGs;
partners are a derangement (no map is "exchanged" with itself, which would waste the activation);
boxes are placed inside the map and fall back to the whole map after 10 rejected draws, so crop
sampling terminates on maps of any size (the released sampler loops forever when a side is <= 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._stats import channel_affine, instance_mean_std

MODES = ("2ins", "1ins")
CROPS = ("none", "style", "content", "both")
STD_EPS = 1e-5  # the released code's eps inside the sqrt
_MAX_BOX_DRAWS = 10

Box = tuple[int, int, int, int]  # top, bottom, left, right


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (one random cycle)."""
    order = torch.randperm(n, generator=generator)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


class CrossNorm(nn.Module):
    """Style exchange between instances (2ins) or channels (1ins); identity unless training and active."""

    def __init__(
        self,
        num_channels: int,
        mode: str = "2ins",
        crop: str = "none",
        threshold: float = 0.1,
        beta: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise NormsearchError(f"crossnorm: mode must be one of {'|'.join(MODES)}, got {mode!r}")
        if crop not in CROPS:
            raise NormsearchError(f"crossnorm: crop must be one of {'|'.join(CROPS)}, got {crop!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise NormsearchError(f"crossnorm: threshold must be in (0, 1], got {threshold}")
        if float(beta) <= 0.0:
            raise NormsearchError(f"crossnorm: beta must be > 0, got {beta}")
        self.num_channels = num_channels
        self.mode = mode
        self.crop = crop
        self.threshold = float(threshold)
        self.beta = float(beta)
        self.active = False
        self.generator = torch.Generator()
        self.seed(int(torch.randint(0, 2**62, (1,))) if seed is None else seed)

    def seed(self, seed: int) -> None:
        """Re-seed the layer's own random stream (partners and crop boxes)."""
        self.generator.manual_seed(int(seed))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, mode={self.mode}, crop={self.crop}, active={self.active}"

    def _box(self, height: int, width: int) -> Box:
        """A box of area ratio >= threshold with area ratio ~ Beta(beta, beta), or the whole map."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        for _ in range(_MAX_BOX_DRAWS):
            side = math.sqrt(rng.beta(self.beta, self.beta))
            h = min(height, max(1, round(height * side)))
            w = min(width, max(1, round(width * side)))
            if h * w >= self.threshold * height * width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, top + h, left, left + w
        return 0, height, 0, width

    def _partner(self, mu: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics each (instance, channel) borrows: another instance's, or another channel's."""
        if self.mode == "2ins":
            partner = _derangement(mu.shape[0], self.generator).to(mu.device)
            return mu[partner], std[partner]
        partner = _derangement(mu.shape[1], self.generator).to(mu.device)
        return mu[:, partner], std[:, partner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return x
        pairs = x.shape[0] if self.mode == "2ins" else x.shape[1]
        if pairs < 2:
            return x  # nobody to exchange with
        height, width = x.shape[2:]
        mu, std = instance_mean_std(x, STD_EPS)
        if self.crop in ("style", "both"):
            top, bottom, left, right = self._box(height, width)
            mu_b, std_b = self._partner(*instance_mean_std(x[:, :, top:bottom, left:right], STD_EPS))
        else:
            mu_b, std_b = self._partner(mu, std)
        if self.crop in ("content", "both"):
            top, bottom, left, right = self._box(height, width)
            content = x[:, :, top:bottom, left:right]
            mu_a, std_a = instance_mean_std(content, STD_EPS)
            scale = std_b / std_a
            out = x.clone()
            out[:, :, top:bottom, left:right] = channel_affine(content, scale, mu_b - mu_a * scale)
            return out
        scale = std_b / std
        return channel_affine(x, scale, mu_b - mu * scale)


class CrossNormPolicy:
    """The paper's activation policy: each training iteration, with probability `p`, turn on
    `active_num` distinct CrossNorm layers chosen at random, and turn every other one off.

    Call `step()` once per iteration, before the forward pass. Its randomness is its own generator.
    """

    def __init__(self, model: nn.Module | Iterable[CrossNorm], p: float, active_num: int = 1, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise NormsearchError(f"crossnorm policy: p must be in [0, 1], got {p}")
        if active_num < 1:
            raise NormsearchError(f"crossnorm policy: active_num must be >= 1, got {active_num}")
        modules = model.modules() if isinstance(model, nn.Module) else model
        self.layers = [m for m in modules if isinstance(m, CrossNorm)]
        self.p = p
        self.active_num = active_num
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> list[int]:
        """Activate this iteration's layers; returns their indices in `self.layers`."""
        for layer in self.layers:
            layer.active = False
        if not self.layers or float(torch.rand((), generator=self.generator)) >= self.p:
            return []
        count = min(self.active_num, len(self.layers))
        chosen = torch.randperm(len(self.layers), generator=self.generator)[:count].tolist()
        for index in chosen:
            self.layers[index].active = True
        return sorted(chosen)

    def off(self) -> None:
        """Turn every CrossNorm layer off (e.g. before evaluation)."""
        for layer in self.layers:
            layer.active = False
