"""`slot_norm(spec, C, native)`: the layer that fills one slot of a network, through `make_norm` except for
the two things a slot of a foreign network needs that a bare norm layer cannot know.

- ``ibn:order=bn_in`` is IBN-Net's DenseNet release (densenet_ibn.py): BatchNorm on the first
  ⌊C·(1-ratio)⌋ channels, affine InstanceNorm on the rest, one split and one concatenation, and the
  release's module layout (`BN`, `IN`), so its checkpoints' keys line up. (The ResNet release, and
  `norms.IBN`, put IN first; the order belongs in `norms/ibn.py` as a parameter, and this layer folds into
  it when it gets there.)
- A timm norm-with-activation slot (`BatchNormAct2d`: the BN, then dropout and activation inside one
  module) keeps its dropout and activation after the new norm (`NormAct`).
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.norms import make_norm
from normsearch.norms.spec import NormSpec


class BatchInstanceNorm(nn.Module):
    """IBN with BN first: BN on channels [0, h), IN(affine) on [h, C), h = int(C·(1-ratio)) (densenet_ibn)."""

    def __init__(
        self, num_channels: int, ratio: float = 0.4, eps: float = 1e-5, momentum: float = 0.1
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


class NormAct(nn.Module):
    """A searched norm followed by the dropout and activation a timm NormAct layer carried."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


def keeps_native(spec: NormSpec, native: nn.Module | None) -> bool:
    """A plain ``bn`` on a BatchNorm slot keeps the network's own layer (its eps and momentum), so an
    all-BN plan leaves a network exactly as it was built."""
    return spec == NormSpec("bn") and isinstance(native, nn.BatchNorm2d)


def slot_norm(spec: NormSpec, num_channels: int, native: nn.Module | None = None) -> nn.Module:
    """The layer for one slot: `native` itself when `keeps_native`, else the planned normalizer."""
    if keeps_native(spec, native):
        return native
    if spec.kind == "ibn" and spec.get("order") == "bn_in":
        params = {k: v for k, v in spec.kwargs.items() if k != "order"}
        layer: nn.Module = BatchInstanceNorm(num_channels, **params)
    else:
        params = {k: v for k, v in spec.kwargs.items() if not (spec.kind == "ibn" and k == "order")}
        layer = make_norm(NormSpec.of(spec.kind, **params), num_channels)
    act = getattr(native, "act", None)
    if isinstance(native, nn.BatchNorm2d) and isinstance(act, nn.Module):  # timm BatchNormAct2d
        return NormAct(layer, getattr(native, "drop", nn.Identity()), act)
    return layer
