"""`NormPlan`: every normalization slot of a concrete network and the NormSpec that fills it.

The one language between search spaces (which produce plans through ArchConfig), models (which consume
them) and exports (which serialize the ArchConfig that resolves to them). Slot names follow torchvision's
ResNet modules (`bn1`, `layer2.0.bn1`, `layer2.0.downsample.1`) plus `layer{i}.{j}.post` for norms after
the residual addition, and inserted modules `layer{i}.{j}.crossnorm` / `.selfnorm` with their position.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from normsearch.errors import NormsearchError
from normsearch.norms.spec import NormSpec

if TYPE_CHECKING:
    from normsearch.arch.config import Backbone

# Inserted modules by name, in the order they run where several sit at one position.
INSERT_KINDS: tuple[str, ...] = ("crossnorm", "selfnorm", "mixstyle", "dsu")

Position = Literal["residual", "identity", "pre", "post"]
POSITIONS: tuple[str, ...] = ("residual", "identity", "pre", "post")


@dataclass(frozen=True)
class Insert:
    """A module inserted into a block (CrossNorm or SelfNorm): what it is, where, and its channels."""

    spec: NormSpec
    position: str
    channels: int


@dataclass(frozen=True)
class CrossNormSchedule:
    """The CrossNorm activation policy the trainer applies per iteration (CNSN §3.2)."""

    p: float
    active_num: int


@dataclass(frozen=True)
class SwitchSchedule:
    """What the trainer does for SwitchNorm slots: switch soft -> hard at a fraction of training
    (SN §4.1.4), and whether BN statistics are re-estimated by batch average at the end (SN §3)."""

    hard_at: float | None = None
    batch_average: bool = False


@dataclass(frozen=True)
class NormPlan:
    """The resolved plan: slot -> NormSpec (forward order), slot channels, inserts, and training hooks.

    `ArchConfig.resolve()` makes it once per network, and everything downstream (models, weight
    inheritance, training) reads only the plan: so it carries the `backbone` it was resolved for and
    `extra_slots`, the norm slots the plain backbone lacks (after-addition norms)."""

    slots: dict[str, NormSpec]
    channels: dict[str, int]
    inserts: dict[str, Insert] = field(default_factory=dict)
    input_norm: str = "none"
    crossnorm: CrossNormSchedule | None = None
    switchable: SwitchSchedule | None = None
    # What the plan was resolved for; two plans with the same slots are the same plan, whatever the source
    # that spelled the backbone (a preset or the torchvision name of one network).
    backbone: Backbone | None = field(default=None, compare=False, repr=False)
    extra_slots: frozenset[str] = frozenset()
    inference: str = "running"  # test-time statistics of the BN-like layers (norms.running.StatsPolicy)

    def __getitem__(self, slot: str) -> NormSpec:
        try:
            return self.slots[slot]
        except KeyError:
            raise NormsearchError(f"plan has no norm slot {slot!r}") from None

    def __contains__(self, slot: object) -> bool:
        return slot in self.slots

    @property
    def added(self) -> set[str]:
        """Module names this plan adds to the plain backbone (every slot at its default): after-addition
        norms and inserted modules. Weight inheritance treats them as new by design, never missing."""
        return set(self.extra_slots) | set(self.inserts)

    def need_backbone(self) -> Backbone:
        """The backbone this plan was resolved for (a plan made by `ArchConfig.resolve()` has one)."""
        if self.backbone is None:
            raise NormsearchError("this NormPlan has no backbone: build it with ArchConfig.resolve()")
        return self.backbone

    def kind_counts(self) -> dict[str, int]:
        """How many slots (and inserted modules) use each normalizer kind."""
        counts = Counter(spec.kind for spec in self.slots.values())
        counts.update(insert.spec.kind for insert in self.inserts.values())
        return dict(counts)

    def block_inserts(self, block: str) -> dict[str, Insert]:
        """Inserted modules of one block, keyed by module name ("crossnorm" / "selfnorm")."""
        prefix = block + "."
        return {name[len(prefix) :]: ins for name, ins in self.inserts.items() if name.startswith(prefix)}

    def rows(self) -> list[tuple[str, int, str]]:
        """(slot, channels, normalizer) for every slot and insert, in forward order."""
        rows = [(slot, self.channels[slot], str(spec)) for slot, spec in self.slots.items()]
        rows += [(name, ins.channels, f"{ins.spec} @{ins.position}") for name, ins in self.inserts.items()]
        return rows
