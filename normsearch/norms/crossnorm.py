"""CrossNorm (Tang et al., "CrossNorm and SelfNorm for Generalization under Distribution Shifts",
ICCV 2021, §3.2, Eq. 2-5): exchange channel-wise mean and std between feature maps during training.

For a feature map A restyled with the statistics of a partner B (Eq. 2)::

    A' = sigma_B (A - mu_A) / sigma_A + mu_B,  sigma = sqrt(unbiased var + 1e-5) as released

- ``mode=2ins`` pairs each instance with another one of the batch, channel by channel (Eq. 4).
- ``mode=1ins`` pairs channels of the same instance (Eq. 3; absent from the released code).
- ``crop`` (Eq. 5): ``style`` takes B's statistics from a box, ``content`` restyles only a box of A,
  ``both`` does both; each box's area ratio is drawn from Beta(beta, beta) and must reach `threshold`.
- ``pairing``: ``derangement`` (default) pairs every map with another one; ``randperm`` is the released
  code's `torch.randperm`, under which a map keeps its own statistics with probability 1/N (a quarter of
  the instances at batch 4), a weaker regularisation.
- ``boxes``: ``inside`` (default) places a box of the drawn area ratio inside the map; ``clipped`` is the
  released `cn_rand_bbox`: a box of side ``int(side·sqrt(ratio))`` (halved, floored, each way) around a
  uniform centre, clipped to the map, kept when its area ratio exceeds `threshold`. Clipping shrinks the
  boxes: `crossnorm_sampling` in `normsearch.bench.norms` measures both samplers.

The layer is the identity in eval mode and while ``active`` is False; `CrossNormPolicy` switches layers
on per training iteration as the paper does. Departures from the released code, on purpose: all
randomness comes from a `torch.Generator` owned by the layer (`seed(...)`), never from the global RNGs;
a sampler falls back to the whole map after 10 (inside) or 100 (clipped) rejected draws, so crop sampling
terminates on maps of any size (the released sampler loops forever when a side is <= 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._stats import Box, Region, Stats, stat_affine

MODES = ("2ins", "1ins")
CROPS = ("none", "style", "content", "both")
PAIRINGS = ("derangement", "randperm")
BOXES = ("inside", "clipped")
STD_EPS = 1e-5  # the released code's eps inside the sqrt
# Draws before a sampler falls back to the whole map. The clipped sampler rejects 16-45 % of its draws on
# 3×3 to 32×32 maps (threshold 0.1, beta 1): after 100 the fallback has probability < 1e-30 wherever a box
# is possible at all, so the released distribution is kept; on sides <= 2 no box ever passes.
_MAX_BOX_DRAWS = {"inside": 10, "clipped": 100}


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (one random cycle)."""
    order = torch.randperm(n, generator=generator)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


def _inside_box(
    rng: np.random.Generator, height: int, width: int, beta: float, threshold: float
) -> Box | None:
    side = math.sqrt(rng.beta(beta, beta))
    h = min(height, max(1, round(height * side)))
    w = min(width, max(1, round(width * side)))
    if h * w < threshold * height * width:
        return None
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, top + h, left, left + w


def _clipped_box(
    rng: np.random.Generator, height: int, width: int, beta: float, threshold: float
) -> Box | None:
    # The released cn_rand_bbox, with its W (= size[2]) as our height and its H (= size[3]) as our width.
    side = math.sqrt(rng.beta(beta, beta))
    cut_h, cut_w = int(height * side), int(width * side)
    row, col = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = int(np.clip(row - cut_h // 2, 0, height)), int(np.clip(row + cut_h // 2, 0, height))
    left, right = int(np.clip(col - cut_w // 2, 0, width)), int(np.clip(col + cut_w // 2, 0, width))
    if (bottom - top) * (right - left) / (height * width) <= threshold:
        return None
    return top, bottom, left, right


_SAMPLERS = {"inside": _inside_box, "clipped": _clipped_box}


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
        pairing: str = "derangement",
        boxes: str = "inside",
    ) -> None:
        super().__init__()
        for key, value, allowed in (
            ("mode", mode, MODES),
            ("crop", crop, CROPS),
            ("pairing", pairing, PAIRINGS),
            ("boxes", boxes, BOXES),
        ):
            if value not in allowed:
                raise NormsearchError(f"crossnorm: {key} must be one of {'|'.join(allowed)}, got {value!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise NormsearchError(f"crossnorm: threshold must be in (0, 1], got {threshold}")
        if float(beta) <= 0.0:
            raise NormsearchError(f"crossnorm: beta must be > 0, got {beta}")
        self.num_channels = num_channels
        self.mode = mode
        self.crop = crop
        self.threshold = float(threshold)
        self.beta = float(beta)
        self.pairing = pairing
        self.boxes = boxes
        self.active = False
        self.generator = torch.Generator()
        self.seed(int(torch.randint(0, 2**62, (1,))) if seed is None else seed)

    def seed(self, seed: int) -> None:
        """Re-seed the layer's own random stream (partners and crop boxes)."""
        self.generator.manual_seed(int(seed))

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, mode={self.mode}, crop={self.crop}, pairing={self.pairing}, "
            f"boxes={self.boxes}, active={self.active}"
        )

    def box(self, height: int, width: int) -> Box:
        """A crop box drawn by this layer's sampler (`boxes`), or the whole map after too many rejections."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        sampler = _SAMPLERS[self.boxes]
        for _ in range(_MAX_BOX_DRAWS[self.boxes]):
            box = sampler(rng, height, width, self.beta, self.threshold)
            if box is not None:
                return box
        return 0, height, 0, width

    def partners(self, count: int) -> torch.Tensor:
        """The index each of `count` maps (instances or channels) borrows its statistics from."""
        if self.pairing == "randperm":
            return torch.randperm(count, generator=self.generator)
        return _derangement(count, self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return x
        pairs = x.shape[0] if self.mode == "2ins" else x.shape[1]
        if pairs < 2:
            return x  # nobody to exchange with
        return self._exchange(x)

    @float32_forward
    def _exchange(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        # Draw order (style box, partners, content box) is part of the seeded stream.
        style: Region = self.box(height, width) if self.crop in ("style", "both") else None
        partner = self.partners(x.shape[0] if self.mode == "2ins" else x.shape[1]).to(x.device)
        content: Region = self.box(height, width) if self.crop in ("content", "both") else None
        # Region 0 is restyled with its own statistics; the partners' statistics come from the last one.
        regions = [None] if self.crop == "none" else [content, style]
        corrections = [_unbiased(height, width, region) for region in regions]
        dim = 0 if self.mode == "2ins" else 1

        def scale_shift(stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
            (_, var_a), (mu_b, var_b) = stats[0], stats[-1]
            std_a = (var_a * corrections[0] + STD_EPS).sqrt()
            std_b = (var_b * corrections[-1] + STD_EPS).sqrt()
            mu_b, std_b = mu_b.index_select(dim, partner), std_b.index_select(dim, partner)
            return std_b / std_a, mu_b

        return stat_affine(x, scale_shift, (), regions)


def _unbiased(height: int, width: int, region: Region) -> float:
    """L / (L - 1) for a region of L pixels (the released unbiased variance), 1 on a single pixel."""
    length = height * width if region is None else (region[1] - region[0]) * (region[3] - region[2])
    return length / (length - 1) if length > 1 else 1.0


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
