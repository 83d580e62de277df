"""The normalizer library: every layer takes `num_channels` first; `make_norm(spec, C)` builds any of them.

Kinds: bn, in, ln, gn (torch), ibn (IBN-Net), sn (Switchable Normalization), crossnorm and selfnorm
(CrossNorm/SelfNorm). `recalibrate_bn` computes batch-average statistics; `CrossNormPolicy` switches
CrossNorm layers on per iteration.
"""

from __future__ import annotations

from normsearch.norms.crossnorm import CrossNorm, CrossNormPolicy
from normsearch.norms.ibn import IBN
from normsearch.norms.registry import REGISTRY, get_kind, make_norm, registered_kinds, validate_spec
from normsearch.norms.running import recalibrate_bn
from normsearch.norms.selfnorm import SelfNorm
from normsearch.norms.spec import NormSpec
from normsearch.norms.switchable import ChannelAffine, SwitchNorm2d

__all__ = [
    "IBN",
    "REGISTRY",
    "ChannelAffine",
    "CrossNorm",
    "CrossNormPolicy",
    "NormSpec",
    "SelfNorm",
    "SwitchNorm2d",
    "get_kind",
    "make_norm",
    "recalibrate_bn",
    "registered_kinds",
    "validate_spec",
]
