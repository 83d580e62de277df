"""`Structure`: the shape of any network as the papers' rules need it, whatever its family.

Every normalization slot (a BatchNorm2d, GroupNorm or LayerNorm2d module, named by its dotted module name)
with its stage (resolution level; 0 = stem), its unit (residual block, dense layer, inverted residual, a
plain conv stage) and its position in that unit (first / middle / last / only, shortcut; stem, transition
and head outside units). Each unit also says where CrossNorm/SelfNorm can go (``pre``, ``residual``,
``identity``, ``post``: CNSN §3.4) and with how many channels, and each stage where an IN after its last
addition (IBN-b) goes. The rules in `arch/rules.py` read only this, so they are written once for every
family; `arch/families.py` builds it from a family adapter or a torch.fx trace, and `from_topology` from
our own ResNet's analytic topology (no network is built for those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from normsearch.arch.topology import Topology

UNIT_POSITIONS = ("first", "middle", "last", "only")


@dataclass(frozen=True)
class Released:
    """A family's released defaults for the papers' rules, used wherever a rule leaves a key unset.

    `ibn_order` is the channel order of an IBN layer: ``in_bn`` (IN on the first channels, the IBN-Net
    ResNet release) or ``bn_in`` (BN first, IN on the rest, the IBN-Net DenseNet release); `ibn_every`
    puts IBN into every n-th unit of a stage (DenseNet-IBN-a: layers 1, 4, 7, ...)."""

    ibn_ratio: float = 0.5
    ibn_order: str = "in_bn"
    ibn_every: int = 1
    xbn_groups: int = 64
    xbn_stem: bool = True


@dataclass(frozen=True)
class SlotInfo:
    """One norm slot: its module name, channels, native layer and where it sits."""

    name: str
    channels: int
    layer: str = "BatchNorm2d"
    stage: int | None = None  # 0 = stem, 1..S; None when the network could not be traced
    unit: str | None = None
    position: str | None = None  # first|middle|last|only|shortcut|stem|transition|head
    depthwise: bool = False  # the conv before it is depthwise (XBNBlock's MobileNet/ShuffleNet position)


@dataclass(frozen=True)
class UnitInfo:
    """One unit (a block the rules count): its norms and its insertion points (position -> channels)."""

    name: str
    kind: str  # residual | dense | split | block | plain
    stage: int
    index: int  # 0-based within the stage
    number: int  # 1-based across the network (XBNBlock's D2/D4/D8 count these)
    in_channels: int
    out_channels: int
    norms: tuple[str, ...]  # the main path's norms in forward order (shortcut norms excluded)
    shortcut: tuple[str, ...] = ()
    positions: dict[str, int] = field(default_factory=dict)
    is_module: bool = True  # False for a plain conv stage, named after its norm

    def child(self, name: str) -> str:
        """The module name of something added to this unit (``layer1.0.crossnorm``; for a plain conv
        stage, a sibling of its norm: ``features.1_crossnorm``)."""
        return f"{self.name}.{name}" if self.is_module else f"{self.name}_{name}"


@dataclass(frozen=True)
class Structure:
    """A network's slots, units and stages in forward order, and its family's released defaults."""

    family: str
    slots: dict[str, SlotInfo]
    units: tuple[UnitInfo, ...] = ()
    num_stages: int = 0
    stage_posts: dict[int, tuple[str, int]] = field(default_factory=dict)  # stage -> (post slot, C)
    released: Released = field(default_factory=Released)
    traced: bool = True
    note: str = ""  # why the structure is unknown, when it is

    @cached_property
    def by_unit(self) -> dict[str, UnitInfo]:
        return {u.name: u for u in self.units}

    def stage_units(self, stage: int) -> list[UnitInfo]:
        return [u for u in self.units if u.stage == stage]

    @property
    def stem(self) -> list[str]:
        return [s.name for s in self.slots.values() if s.position == "stem"]

    def post_slots(self) -> dict[str, int]:
        """Every name an after-addition norm can take (a unit's ``post`` or a stage's) -> channels."""
        out = {u.child("post"): u.positions["post"] for u in self.units if "post" in u.positions}
        out.update(dict(self.stage_posts.values()))
        return out

    def block_kind(self) -> str:
        """``bottleneck`` when units have three main-path norms (P1, P2, P3 all differ), else ``basic``."""
        return "bottleneck" if any(len(u.norms) >= 3 for u in self.units) else "basic"


def from_topology(topo: Topology) -> Structure:
    """The Structure of our (or torchvision's) ResNet, read from its analytic topology."""
    slots = {"bn1": SlotInfo("bn1", topo.stem_channels, stage=0, position="stem")}
    units = []
    for block in topo.blocks:
        main = [rel for rel in block.norms if rel != "downsample.1"]
        for i, rel in enumerate(main):
            position = "first" if i == 0 else "last" if i == len(main) - 1 else "middle"
            slots[f"{block.name}.{rel}"] = SlotInfo(
                f"{block.name}.{rel}", block.norms[rel], stage=block.stage, unit=block.name, position=position
            )
        if block.downsample:
            name = f"{block.name}.downsample.1"
            slots[name] = SlotInfo(
                name, block.out_channels, stage=block.stage, unit=block.name, position="shortcut"
            )
        out = block.out_channels
        positions = {"pre": block.in_channels, "residual": out, "identity": out, "post": out}
        units.append(
            UnitInfo(
                block.name,
                "residual",
                block.stage,
                block.index,
                block.number,
                block.in_channels,
                out,
                tuple(f"{block.name}.{rel}" for rel in main),
                (f"{block.name}.downsample.1",) if block.downsample else (),
                positions,
            )
        )
    posts = {}
    for stage in range(1, topo.num_stages + 1):
        last = topo.stage_blocks(stage)[-1]
        posts[stage] = (f"{last.name}.post", last.out_channels)
    return Structure("resnet", slots, tuple(units), topo.num_stages, posts)
