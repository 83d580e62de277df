"""Running statistics for our BN-like layers, and batch-average ("precise BN") recalibration.

`RunningStats` follows torch's `_BatchNorm` conventions exactly: `momentum` is the weight of the new
batch (torch's 0.1 is the released SN code's 0.9), `momentum=None` means a cumulative average over the
batches seen since the last `reset_running_stats()`, `running_var` starts at 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normsearch.errors import NormsearchError


class RunningStats(nn.Module):
    """Mixin for layers that keep BN running statistics over `num_features` channels."""

    momentum: float | None

    def _init_running(self, num_features: int, momentum: float | None) -> None:
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def _count_batch(self) -> float:
        """Count one more training batch; return the weight of its statistics in the running average."""
        self.num_batches_tracked.add_(1)
        return self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        weight = self._count_batch()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var.lerp_(var.to(self.running_var.dtype), weight)

    def _native_batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """`nn.BatchNorm2d`'s forward on this layer's buffers: batch statistics and a running-average
        update in training, running statistics in eval."""
        factor = self._count_batch() if self.training else 0.0
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, factor, eps)


def _is_bn_like(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm | RunningStats) and getattr(
        module, "track_running_stats", True
    )


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise NormsearchError("recalibrate_bn: each batch must be a tensor or a (inputs, ...) tuple")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], n: int) -> int:
    """Set every BN-like layer's running statistics to their exact average over `n` batches.

    Switchable Normalization §3 "Inference" (batch average): freeze the network, feed mini-batches from
    the training set, and average the means and variances each BN part produced. Every other layer
    runs in eval mode (so CrossNorm is off and SelfNorm uses its running statistics), weights do not
    change. Covers `nn.BatchNorm*`, IBN's BN part and SwitchNorm's BN part. Returns the number of
    batches actually fed (fewer than `n` if `batches` runs out).
    """
    if n < 1:
        raise NormsearchError(f"recalibrate_bn: n must be >= 1, got {n}")
    layers = [m for m in model.modules() if _is_bn_like(m)]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: exactly the mean over the fed batches
            layer.train()
        fed = 0
        for batch in islice(batches, n):
            model(_first_tensor(batch))
            fed += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    if fed == 0:
        raise NormsearchError("recalibrate_bn: no batches were given")
    return fed
