"""Architectures: `ArchConfig` (what a user writes), `NormPlan` (every slot's normalizer) and the network's
topology that both read."""

from __future__ import annotations

from normsearch.arch.config import PRESETS, ArchConfig, Backbone, NormConfig, load_arch
from normsearch.arch.plan import CrossNormSchedule, Insert, NormPlan, SwitchSchedule
from normsearch.arch.topology import BlockShape, Topology, resnet_topology

__all__ = [
    "PRESETS",
    "ArchConfig",
    "Backbone",
    "BlockShape",
    "CrossNormSchedule",
    "Insert",
    "NormConfig",
    "NormPlan",
    "SwitchSchedule",
    "Topology",
    "load_arch",
    "resnet_topology",
]
