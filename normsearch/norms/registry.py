"""The registry of normalizer kinds and `make_norm`, the one door through which every slot is filled.

Mirrors timm's `create_norm`: one map from names to constructors, every constructor takes the channel
count first, and unknown names or parameters fail with a message listing what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normsearch.errors import NormsearchError
from normsearch.norms.crossnorm import CrossNorm
from normsearch.norms.dson import DSON
from normsearch.norms.dsu import DSU
from normsearch.norms.ibn import ORDERS, ibn_norm
from normsearch.norms.mixstyle import MixStyle
from normsearch.norms.selfnorm import SelfNorm
from normsearch.norms.sparse_switchable import SparseSwitchNorm2d
from normsearch.norms.spec import NormSpec
from normsearch.norms.switchable import SwitchNorm2d


def _batch_norm(num_channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    return nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum)


def _instance_norm(num_channels: int, affine: bool = True, eps: float = 1e-5) -> nn.Module:
    # affine=True by default, as IBN-Net uses it; no running statistics: IN always normalizes the sample.
    return nn.InstanceNorm2d(num_channels, affine=affine, eps=eps)


def _layer_norm(num_channels: int, eps: float = 1e-5) -> nn.Module:
    # LN over (C, H, W) with a per-channel affine, the form used for CNNs (and by SN's LN part).
    return nn.GroupNorm(1, num_channels, eps=eps)


def _group_norm(num_channels: int, groups: int = 32, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    if groups < 1 or num_channels % groups:
        raise NormsearchError(
            f"gn: groups={groups} does not divide the {num_channels} channels of this slot "
            f"(C % groups must be 0)"
        )
    return nn.GroupNorm(groups, num_channels, eps=eps, affine=affine)


@dataclass(frozen=True)
class NormKind:
    """A registered normalizer: its constructor, its parameters with their types, and a summary."""

    name: str
    factory: Callable[..., nn.Module]
    params: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    summary: str = ""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # str parameters' allowed values


_NUM = (int, float)
REGISTRY: dict[str, NormKind] = {
    kind.name: kind
    for kind in (
        NormKind("bn", _batch_norm, {"eps": _NUM, "momentum": _NUM}, "BatchNorm2d"),
        NormKind("in", _instance_norm, {"affine": bool, "eps": _NUM}, "InstanceNorm2d, affine by default"),
        NormKind("ln", _layer_norm, {"eps": _NUM}, "LayerNorm over (C, H, W), per-channel affine"),
        NormKind("gn", _group_norm, {"groups": int, "eps": _NUM, "affine": bool}, "GroupNorm"),
        NormKind(
            "ibn",
            ibn_norm,
            {"ratio": _NUM, "order": str, "eps": _NUM, "momentum": _NUM},
            "IBN-Net: IN on the first C·ratio channels, BN on the rest (order=bn_in: BN first)",
            {"order": ORDERS},
        ),
        NormKind(
            "sn",
            SwitchNorm2d,
            {
                "mode": str,
                "mean": str,
                "var": str,
                "eps": _NUM,
                "momentum": _NUM,
                "last_gamma": bool,
                "unbiased": bool,
            },
            "Switchable Normalization (soft or hard)",
        ),
        NormKind(
            "ssn",
            SparseSwitchNorm2d,
            {"eps": _NUM, "momentum": _NUM, "last_gamma": bool, "unbiased": bool},
            "Sparse Switchable Normalization (SparsestMax ratios, one-hot by the end of training)",
        ),
        NormKind(
            "crossnorm",
            CrossNorm,
            {
                "mode": str,
                "crop": str,
                "threshold": _NUM,
                "beta": _NUM,
                "seed": int,
                "pairing": str,
                "boxes": str,
            },
            "CrossNorm style exchange (training only)",
        ),
        NormKind("selfnorm", SelfNorm, {"form": str, "eps": _NUM}, "SelfNorm style recalibration"),
        NormKind(
            "mixstyle",
            MixStyle,
            {"p": _NUM, "alpha": _NUM, "mix": str, "eps": _NUM, "seed": int},
            "MixStyle: mix instance statistics between samples (training only)",
        ),
        NormKind(
            "dsu",
            DSU,
            {"p": _NUM, "eps": _NUM, "seed": int},
            "DSU: re-sample instance statistics from the batch's uncertainty (training only)",
        ),
        NormKind(
            "dson",
            DSON,
            {"domains": int, "eps": _NUM, "momentum": _NUM, "mix": _NUM},
            "DSON: one BN+IN mixture per source domain, branches averaged at test",
        ),
    )
}


def registered_kinds() -> list[str]:
    """Names of every registered normalizer kind."""
    return list(REGISTRY)


def get_kind(name: str) -> NormKind:
    """The registered kind `name`, or a NormsearchError listing the kinds there are."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise NormsearchError(f"unknown normalizer kind {name!r}; allowed: {', '.join(REGISTRY)}") from None


def validate_spec(spec: NormSpec | str | Mapping[str, Any]) -> NormSpec:
    """Parse `spec` and check its kind and parameter names and types, without building a layer."""
    spec = NormSpec.coerce(spec)
    kind = get_kind(spec.kind)
    for key, value in spec.params:
        if key not in kind.params:
            allowed = ", ".join(kind.params) or "none"
            raise NormsearchError(f"{spec}: unknown parameter {key!r} for {kind.name}; allowed: {allowed}")
        expected = kind.params[key]
        # bool is an int in Python; a flag given where a number is expected is still a mistake.
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if not ok:
            names = (
                expected.__name__ if isinstance(expected, type) else "|".join(t.__name__ for t in expected)
            )
            raise NormsearchError(f"{spec}: parameter {key!r} must be {names}, got {value!r}")
        allowed_values = kind.choices.get(key)
        if allowed_values is not None and value not in allowed_values:
            raise NormsearchError(f"{spec}: {key} must be {' or '.join(allowed_values)}, got {value!r}")
    return spec


# `norm.input: instance`: each image standardised per channel before the stem (no affine, no statistics).
INPUT_NORM = NormSpec.of("in", affine=False)


def make_norm(spec: NormSpec | str | Mapping[str, Any], num_channels: int) -> nn.Module:
    """Build the normalizer described by `spec` for a slot with `num_channels` channels.

    `spec` is a NormSpec, a string ``kind`` / ``kind:key=value,...`` or a mapping with a ``kind`` key.
    """
    spec = validate_spec(spec)
    if num_channels < 1:
        raise NormsearchError(f"{spec}: num_channels must be >= 1, got {num_channels}")
    return REGISTRY[spec.kind].factory(num_channels, **spec.kwargs)
