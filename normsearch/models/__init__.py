"""Models that read a NormPlan: our ResNet family (`build_model`) and `apply_plan` for torchvision ResNets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from normsearch.arch import ArchConfig
from normsearch.models.apply import apply_plan
from normsearch.models.resnet import ResNet


def build_model(
    config: ArchConfig | dict[str, Any] | str | Path, weights: str | Path | None = None
) -> nn.Module:
    """Build the network an ArchConfig describes; `config` may be the model, a dict, or a YAML/JSON path
    (an exported file with an `arch` section works too). `weights` (a file written by `normsearch export
    --weights`, or a bare state_dict) is loaded strictly."""
    if isinstance(config, str | Path):
        config = ArchConfig.load(config)
    elif isinstance(config, dict):
        config = ArchConfig.from_dict(config)
    plan = config.resolve()
    backbone = config.backbone
    spec = backbone.resolved()
    model = ResNet(
        backbone.topology(),
        plan,
        backbone.num_classes,
        backbone.in_channels,
        spec["stem"],
        groups=spec["groups"],
        zero_init_last=backbone.zero_init_last,
    )
    if weights is not None:
        from normsearch.models.checkpoint import load_strict, read_weights

        load_strict(model, read_weights(weights), str(weights))
    return model


__all__ = ["ResNet", "apply_plan", "build_model"]
