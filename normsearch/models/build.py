"""Networks from a NormPlan: `build_network(plan)` for every backbone (our ResNet family natively, any other
network built by its source and given its plan by `apply_plan`), and `build_model`, the users' door, which
takes an ArchConfig, a mapping or a file, resolves it once and loads weights.

Everything inside normsearch builds from the plan it resolved once per network (`ArchConfig.resolve()`);
only `build_model` resolves, for users who hold an ArchConfig or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from normsearch.arch import ArchConfig, NormPlan
from normsearch.arch.config import plan_of
from normsearch.arch.sources import build_source
from normsearch.models.apply import apply_plan
from normsearch.models.inherit import apply_weights
from normsearch.models.resnet import ResNet
from normsearch.models.weights import Checkpoint


def build_network(plan: NormPlan) -> nn.Module:
    """The network of `plan` (made by `ArchConfig.resolve()`, which gives it its backbone) at its fresh
    random initialization; nothing is downloaded or loaded (see `apply_weights` for that)."""
    backbone = plan.need_backbone()
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


def build_model(
    config: ArchConfig | NormPlan | dict[str, Any] | str | Path,
    weights: str | Path | Checkpoint | dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Build the network an ArchConfig describes; `config` may be the model, a dict, or a YAML/JSON path
    (an exported file with an `arch` section works too), or a NormPlan already resolved. `weights`
    (default: the config's `backbone.weights`) loads a checkpoint with weight inheritance
    (`normsearch.models.inherit`); what each slot received is then `model.inheritance`. Without weights
    the network starts from a fresh random initialization (nothing is downloaded for a torchvision, timm
    or module backbone)."""
    plan = config if isinstance(config, NormPlan) else plan_of(config)
    model = build_network(plan)
    source = weights if weights is not None else plan.need_backbone().weights
    if source is not None:
        apply_weights(model, plan, source)
    return model
