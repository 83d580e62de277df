"""Models that read a NormPlan: `build_model` for every backbone (our ResNet family natively, any other
network built by source and given its plan by `apply_plan`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from normsearch.arch import ArchConfig
from normsearch.arch.sources import build_source
from normsearch.models.apply import apply_plan
from normsearch.models.resnet import ResNet


def build_model(config: ArchConfig | dict[str, Any] | str | Path) -> nn.Module:
    """Build the network an ArchConfig describes; `config` may be the model, a dict, or a YAML/JSON path
    (an exported file with an `arch` section works too). Weights are random (a fresh initialization)."""
    if isinstance(config, str | Path):
        config = ArchConfig.load(config)
    elif isinstance(config, dict):
        config = ArchConfig.from_dict(config)
    plan = config.resolve()
    backbone = config.backbone
    if backbone.source != "resnet":
        kind, name, kwargs = backbone.source_spec()
        model = build_source(kind, name, kwargs, backbone.num_classes, backbone.in_channels)
        return apply_plan(model, plan)
    spec = backbone.resolved()
    return ResNet(
        backbone.topology(),
        plan,
        backbone.num_classes,
        backbone.in_channels,
        spec["stem"],
        groups=spec["groups"],
        zero_init_last=backbone.zero_init_last,
        se=backbone.se,
    )


__all__ = ["ResNet", "apply_plan", "build_model"]
