"""Architectures: `ArchConfig` (what a user writes), `NormPlan` (every slot's normalizer) and the network's
`Structure` (slots, units, stages of any family; our ResNet's analytic `Topology`) that both read."""

from __future__ import annotations

from normsearch.arch.config import PRESETS, ArchConfig, Backbone, NormConfig, load_arch, plan_of
from normsearch.arch.plan import CrossNormSchedule, Insert, NormPlan, SwitchSchedule
from normsearch.arch.structure import Released, SlotInfo, Structure, UnitInfo
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
    "Released",
    "SlotInfo",
    "Structure",
    "SwitchSchedule",
    "Topology",
    "UnitInfo",
    "load_arch",
    "plan_of",
    "resnet_topology",
]
