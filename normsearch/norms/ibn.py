"""IBN: Instance-Batch Normalization (Pan et al., "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net", ECCV 2018, §3.2 and Table 5).

Two channel orders, the `order` key of an ``ibn`` spec, both built here by `ibn_norm` (the registry's
``ibn`` constructor, so `make_norm` is the one door for either):

- ``in_bn`` (default; the ResNet release, resnet_ibn_a.py): InstanceNorm (affine) on the first
  floor(C·ratio) channels, BatchNorm on the rest (`IBN`). The released code builds `IN(int(C·ratio))` and
  `BN(C - half)` with `half` computed inconsistently, so it crashes for ratio < 0.5; here any ratio in
  [0, 1] and any C work. Both halves run in one mixed-statistics kernel, so there is no split and no
  concatenation of feature maps.
- ``bn_in`` (the DenseNet release, densenet_ibn.py): BatchNorm on the first int(C·(1-ratio)) channels,
  affine InstanceNorm on the rest (`BatchInstanceNorm`), one split and one concatenation, and the
  release's module layout (`BN`, `IN`), so its checkpoints' keys line up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._mixed import mixed_norm
from normsearch.norms.running import RunningStats

ORDERS: tuple[str, ...] = ("in_bn", "bn_in")
DEFAULT_RATIO = {"in_bn": 0.5, "bn_in": 0.4}  # the releases' defaults: IBN-ResNet 0.5, IBN-DenseNet 0.4


def ibn_norm(
    num_channels: int,
    ratio: float | None = None,
    order: str = "in_bn",
    eps: float = 1e-5,
    momentum: float | None = 0.1,
) -> nn.Module:
    """The ``ibn`` layer of `order` (see the module docstring); `ratio` is the IN share of the channels
    (default: the release's of that order)."""
    if order not in ORDERS:
        raise NormsearchError(f"ibn: order must be {' or '.join(ORDERS)}, got {order!r}")
    ratio = DEFAULT_RATIO[order] if ratio is None else ratio
    if order == "bn_in":
        if not 0.0 <= float(ratio) <= 1.0:
            raise NormsearchError(f"ibn: ratio must be in [0, 1], got {ratio}")
        return BatchInstanceNorm(num_channels, ratio, eps, momentum)
    return IBN(num_channels, ratio, eps, momentum)


class BatchInstanceNorm(nn.Module):
    """IBN with BN first: BN on channels [0, h), IN(affine) on [h, C), h = int(C·(1-ratio)) (densenet_ibn)."""

    def __init__(
        self, num_channels: int, ratio: float = 0.4, eps: float = 1e-5, momentum: float | None = 0.1
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.half = int(num_channels * (1 - float(ratio)))
        self.BN = nn.BatchNorm2d(self.half, eps=eps, momentum=momentum) if self.half else None
        rest = num_channels - self.half
        self.IN = nn.InstanceNorm2d(rest, affine=True, eps=eps) if rest else None

    def extra_repr(self) -> str:
        return f"{self.num_channels}, bn_channels={self.half}, order=bn_in"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.IN is None:
            return self.BN(x)
        if self.BN is None:
            return self.IN(x)
        bn, inst = torch.split(x, [self.half, self.num_channels - self.half], 1)
        return torch.cat((self.BN(bn.contiguous()), self.IN(inst.contiguous())), 1)


class IBN(RunningStats):
    """IN(affine) on channels [0, k), BN on [k, C), k = floor(C · ratio).

    ratio = 0 is exactly `nn.BatchNorm2d(C)` and ratio = 1 exactly `nn.InstanceNorm2d(C, affine=True)`
    (both take the native kernels). Parameters: one `weight` and `bias` over all C channels; running
    statistics over the C - k BN channels only.
    """

    def __init__(
        self, num_channels: int, ratio: float = 0.5, eps: float = 1e-5, momentum: float | None = 0.1
    ) -> None:
        super().__init__()
        if not 0.0 <= float(ratio) <= 1.0:
            raise NormsearchError(f"ibn: ratio must be in [0, 1], got {ratio}")
        self.num_channels = num_channels
        self.ratio = float(ratio)
        self.eps = eps
        self.num_in = math.floor(num_channels * self.ratio)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self._init_running(num_channels - self.num_in, momentum)
        one_hot = torch.zeros(num_channels, 3)
        one_hot[: self.num_in, 0] = 1.0
        one_hot[self.num_in :, 2] = 1.0
        self.register_buffer("_weights", one_hot, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, ratio={self.ratio}, in_channels={self.num_in}"

    @float32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, c = self.num_in, self.num_channels
        if k == 0:
            return self._native_batch_norm(x, self.weight, self.bias, self.eps)
        if k == c:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        weights = self._weights.to(x.dtype)
        if self.training:
            y, mean, var = mixed_norm(x, weights, weights, self.weight, self.bias, self.eps)
            count = x.shape[0] * x.shape[2] * x.shape[3]
            # torch's BN keeps the unbiased batch variance in running_var; so does the BN part here.
            self._update_running(mean[k:], var[k:] * (count / max(count - 1, 1)))
            return y
        pad_mean = torch.zeros(k, dtype=x.dtype, device=x.device)
        running = (
            torch.cat([pad_mean, self.running_mean.to(x.dtype)]),
            torch.cat([pad_mean + 1.0, self.running_var.to(x.dtype)]),
        )
        y, _, _ = mixed_norm(x, weights, weights, self.weight, self.bias, self.eps, running)
        return y
