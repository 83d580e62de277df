"""Switchable Normalization (Luo et al., "Differentiable Learning-to-Normalize via Switchable
Normalization", ICLR 2019; Eq. 3-5, §3 "Inference", Table 11).

Each layer normalizes with a softmax-weighted mixture of IN, LN and BN statistics, with separate weights
for the mean and for the variance (6 control parameters, equal at initialization). The LN and BN
statistics are derived from the IN ones (Eq. 4). A hard layer uses one estimate for the mean and one for
the variance (the argmax of a trained soft layer: `to_hard()`); a hard layer that picks BN for both is
an affine map at inference (`fold()`).

Departures from the released code, on purpose:
- `momentum` is torch's convention (weight of the new batch): the released 0.9 is 0.1 here.
- The statistics order is [IN, LN, BN] everywhere, including the weight vectors.
- `unbiased=True` (default) keeps the released code's unbiased IN variance (divide by H·W - 1), which
  the LN and BN variances then inherit through Eq. 4; `unbiased=False` gives the paper's Eq. 2, under
  which one-hot weights reproduce `nn.BatchNorm2d` / `InstanceNorm2d` / LN exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms._amp import float32_forward
from normsearch.norms._mixed import mixed_norm
from normsearch.norms.running import RunningStats

STATS = ("in", "ln", "bn")
MODES = ("soft", "hard")


class ChannelAffine(nn.Module):
    """y = x · scale[c] + shift[c]: what a hard BN/BN SwitchNorm (or any BN) is at inference."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(num_channels))
        self.register_buffer("shift", torch.zeros(num_channels))
        self.register_buffer("_zero", torch.zeros(num_channels), persistent=False)
        self.register_buffer("_one", torch.ones(num_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The native BN inference kernel with mean 0 and variance 1 (eps 0) is exactly this affine
        # map, and runs faster on CPU than a broadcast multiply-add.
        return F.batch_norm(x, self._zero, self._one, self.scale, self.shift, False, 0.0, 0.0)


class SwitchNorm2d(RunningStats):
    """Switchable Normalization over (N, C, H, W); `mode` soft (learned ratios) or hard (fixed choice).

    Training uses the batch for the BN part and updates running statistics; eval takes IN and LN
    statistics from the sample and the BN part from the running statistics (or from `recalibrate_bn`,
    the paper's batch average).
    """

    def __init__(
        self,
        num_channels: int,
        mode: str = "soft",
        mean: str = "bn",
        var: str = "bn",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        last_gamma: bool = False,
        unbiased: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise NormsearchError(f"sn: mode must be one of {'|'.join(MODES)}, got {mode!r}")
        for name, value in (("mean", mean), ("var", var)):
            if value not in STATS:
                raise NormsearchError(f"sn: {name} must be one of {'|'.join(STATS)}, got {value!r}")
        self.num_channels = num_channels
        self.mode = mode
        self.mean_choice = mean
        self.var_choice = var
        self.eps = eps
        self.last_gamma = bool(last_gamma)
        self.unbiased = bool(unbiased)
        self.weight = nn.Parameter(torch.zeros(num_channels) if last_gamma else torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        if mode == "soft":
            self.mean_weight = nn.Parameter(torch.ones(3))
            self.var_weight = nn.Parameter(torch.ones(3))
        else:
            self.register_buffer(
                "mean_weight", nn.functional.one_hot(torch.tensor(STATS.index(mean)), 3).float()
            )
            self.register_buffer(
                "var_weight", nn.functional.one_hot(torch.tensor(STATS.index(var)), 3).float()
            )
        self._init_running(num_channels, momentum)

    def extra_repr(self) -> str:
        choice = "" if self.mode == "soft" else f", mean={self.mean_choice}, var={self.var_choice}"
        return f"{self.num_channels}, mode={self.mode}{choice}, unbiased={self.unbiased}"

    def ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The importance ratios (w_in, w_ln, w_bn) for the mean and for the variance (Eq. 5)."""
        if self.mode == "soft":
            return self.mean_weight.softmax(0), self.var_weight.softmax(0)
        return self.mean_weight, self.var_weight

    @float32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "hard" and self.mean_choice == self.var_choice:
            native = self._native(x)
            if native is not None:
                return native
        return self._mix(x, *self.ratios())

    def _mix(self, x: torch.Tensor, wm: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
        """Eq. 3 with the ratio vectors `wm`, `wv` (3,) for every channel; running statistics in training."""
        c = self.num_channels
        wm, wv = wm.to(x.dtype).expand(c, 3), wv.to(x.dtype).expand(c, 3)
        hw = x.shape[2] * x.shape[3]
        correction = hw / (hw - 1) if (self.unbiased and hw > 1) else 1.0
        if self.training:
            y, mean, var = mixed_norm(x, wm, wv, self.weight, self.bias, self.eps, None, correction)
            if not self.unbiased:
                count = x.shape[0] * hw
                var = var * (count / max(count - 1, 1))  # torch's BN convention for running_var
            self._update_running(mean, var)
            return y
        running = (self.running_mean.to(x.dtype), self.running_var.to(x.dtype))
        y, _, _ = mixed_norm(x, wm, wv, self.weight, self.bias, self.eps, running, correction)
        return y

    def _native(self, x: torch.Tensor) -> torch.Tensor | None:
        """Native kernels for a hard layer with one choice, where they compute the same thing."""
        choice = self.mean_choice
        if choice == "bn" and (not self.training or not self.unbiased):
            # Inference with BN statistics is the folded affine map whatever `unbiased` says; training
            # matches torch's BN only with the biased variance.
            return self._native_batch_norm(x, self.weight, self.bias, self.eps)
        if self.unbiased:
            return None
        if choice == "in":
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    @torch.no_grad()
    def to_hard(self) -> SwitchNorm2d:
        """A hard layer choosing the argmax of this layer's mean and variance ratios (SN §3.2, "sparse
        SN" by argmax), with the same affine parameters and running statistics."""
        wm, wv = self.ratios()
        hard = SwitchNorm2d(
            self.num_channels,
            mode="hard",
            mean=STATS[int(wm.argmax())],
            var=STATS[int(wv.argmax())],
            eps=self.eps,
            momentum=self.momentum,
            unbiased=self.unbiased,
        )
        hard.to(self.weight.device)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            getattr(hard, name).copy_(getattr(self, name))
        hard.train(self.training)
        return hard

    @torch.no_grad()
    def fold(self) -> ChannelAffine:
        """The inference-time affine map of a hard BN/BN layer (SN paper Table 11, item 7)."""
        if self.mode != "hard" or self.mean_choice != "bn" or self.var_choice != "bn":
            raise NormsearchError(
                f"sn: only a hard layer with mean=bn and var=bn folds to an affine map; this one is "
                f"mode={self.mode}, mean={self.mean_choice}, var={self.var_choice}"
            )
        affine = ChannelAffine(self.num_channels).to(device=self.weight.device, dtype=self.weight.dtype)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        affine.scale.copy_(scale)
        affine.shift.copy_(self.bias - self.running_mean * scale)
        return affine
