"""The normalizer library: every layer takes `num_channels` first; `make_norm(spec, C)` builds any of them.

Kinds: bn, in, ln, gn (torch), ibn (IBN-Net, either release's channel order: `order`), sn (Switchable
Normalization), ssn (Sparse SN), crossnorm and selfnorm (CrossNorm/SelfNorm), mixstyle (MixStyle), dsu (DSU),
dson (domain-specific BN+IN). `recalibrate_bn` computes batch-average statistics; `CrossNormPolicy` switches
CrossNorm layers on per iteration; `set_sparse_progress` tells SSN layers how far training is;
`set_domains` gives DSON and cross-domain MixStyle the batch's source-domain labels.
"""

from __future__ import annotations

from normsearch.norms.crossnorm import CrossNorm, CrossNormPolicy
from normsearch.norms.domains import set_domains
from normsearch.norms.dson import DSON
from normsearch.norms.dsu import DSU
from normsearch.norms.ibn import IBN
from normsearch.norms.mixstyle import MixStyle
from normsearch.norms.registry import (
    INPUT_NORM,
    REGISTRY,
    get_kind,
    make_norm,
    registered_kinds,
    validate_spec,
)
from normsearch.norms.running import recalibrate_bn
from normsearch.norms.selfnorm import SelfNorm
from normsearch.norms.sparse_switchable import (
    SparseSwitchNorm2d,
    set_sparse_progress,
    sparse_control_parameters,
    sparsemax,
    sparsestmax,
)
from normsearch.norms.spec import NormSpec
from normsearch.norms.switchable import ChannelAffine, SwitchNorm2d

__all__ = [
    "DSON",
    "DSU",
    "IBN",
    "INPUT_NORM",
    "REGISTRY",
    "ChannelAffine",
    "CrossNorm",
    "CrossNormPolicy",
    "MixStyle",
    "NormSpec",
    "SelfNorm",
    "SparseSwitchNorm2d",
    "SwitchNorm2d",
    "get_kind",
    "make_norm",
    "recalibrate_bn",
    "registered_kinds",
    "set_domains",
    "set_sparse_progress",
    "sparse_control_parameters",
    "sparsemax",
    "sparsestmax",
    "validate_spec",
]
