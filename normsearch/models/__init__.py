"""Models that read a NormPlan: `build_network(plan)` for every backbone (our ResNet family natively, any
other network built by source and given its plan by `apply_plan`), `build_model` (the users' door: an
ArchConfig or a file, resolved once); pretrained weights (`load_weights`, `save_checkpoint`) and weight
inheritance into any plan (`inherit`, `apply_weights`)."""

from __future__ import annotations

from normsearch.models.apply import apply_plan
from normsearch.models.build import build_model, build_network
from normsearch.models.inherit import InheritReport, SlotInheritance, apply_weights, inherit
from normsearch.models.resnet import ResNet
from normsearch.models.weights import Checkpoint, load_weights, save_checkpoint

__all__ = [
    "Checkpoint",
    "InheritReport",
    "ResNet",
    "SlotInheritance",
    "apply_plan",
    "apply_weights",
    "build_model",
    "build_network",
    "inherit",
    "load_weights",
    "save_checkpoint",
]
