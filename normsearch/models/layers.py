"""`slot_norm(spec, C, native)`: the layer that fills one slot of a network: `make_norm`'s layer (every
normalizer, IBN's channel order included, comes from there), plus the two things a slot of a foreign
network needs that a bare norm layer cannot know.

- A plain ``bn`` on a BatchNorm slot keeps the network's own layer (`keeps_native`).
- A timm norm-with-activation slot (`BatchNormAct2d`: the BN, then dropout and activation inside one
  module) keeps its dropout and activation after the new norm (`NormAct`).
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.norms import make_norm
from normsearch.norms.spec import NormSpec


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
    layer = make_norm(spec, num_channels)
    act = getattr(native, "act", None)
    if isinstance(native, nn.BatchNorm2d) and isinstance(act, nn.Module):  # timm BatchNormAct2d
        return NormAct(layer, getattr(native, "drop", nn.Identity()), act)
    return layer
