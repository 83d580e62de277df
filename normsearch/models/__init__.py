"""Models that read a NormPlan: `build_model` for every backbone (our ResNet family natively, any other
network built by source and given its plan by `apply_plan`); pretrained weights (`load_weights`,
`save_checkpoint`) and weight inheritance into any plan (`inherit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.arch.sources import build_source
from normsearch.models.apply import apply_plan
from normsearch.models.inherit import InheritReport, SlotInheritance, added_modules, apply_weights, inherit
from normsearch.models.resnet import ResNet
from normsearch.models.weights import Checkpoint, load_weights, save_checkpoint


def build_model(
    config: ArchConfig | dict[str, Any] | str | Path,
    weights: str | Path | Checkpoint | dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Build the network an ArchConfig describes; `config` may be the model, a dict, or a YAML/JSON path
    (an exported file with an `arch` section works too). `weights` (default: the config's
    `backbone.weights`) loads a checkpoint with weight inheritance (`normsearch.models.inherit`); what each
    slot received is then `model.inheritance`. Without weights the network starts from a fresh random
    initialization (nothing is downloaded for a torchvision, timm or module backbone)."""
    if isinstance(config, str | Path):
        config = ArchConfig.load(config)
    elif isinstance(config, dict):
        config = ArchConfig.from_dict(config)
    plan = config.resolve()
    backbone = config.backbone
    if backbone.source != "resnet":
        kind, name, kwargs = backbone.source_spec()
        model = build_source(kind, name, kwargs, backbone.num_classes, backbone.in_channels)
        model = apply_plan(model, plan)
    else:
        spec = backbone.resolved()
        model = ResNet(
            backbone.topology(),
            plan,
            backbone.num_classes,
            backbone.in_channels,
            spec["stem"],
            groups=spec["groups"],
            zero_init_last=backbone.zero_init_last,
            se=backbone.se,
        )
    source = weights if weights is not None else backbone.weights
    if source is not None:
        apply_weights(model, config, source)
    return model


__all__ = [
    "Checkpoint",
    "InheritReport",
    "ResNet",
    "SlotInheritance",
    "added_modules",
    "apply_plan",
    "apply_weights",
    "build_model",
    "inherit",
    "load_weights",
    "save_checkpoint",
]
