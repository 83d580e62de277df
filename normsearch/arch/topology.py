"""The shape of a ResNet: stem, stages, blocks, and the channel count of every normalization slot.

Both the plan resolver (which slots exist) and the model builder (which layers to make) read this, so
they cannot disagree. Names follow torchvision's ResNet modules: `bn1` is the stem norm,
`layer{i}.{j}.bn{k}` the block norms, `layer{i}.{j}.downsample.1` the shortcut norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

BlockType = Literal["basic", "bottleneck"]
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclass(frozen=True)
class BlockShape:
    """One residual block: where it sits, its channels, and its norm slots (relative name -> channels)."""

    name: str  # e.g. "layer2.0"
    stage: int  # 1-based
    index: int  # 0-based within the stage
    number: int  # 1-based across the whole network (XBNBlock's D2/D4/D8 count these)
    in_channels: int
    width: int  # channels inside the residual branch
    out_channels: int
    stride: int
    norms: dict[str, int] = field(default_factory=dict)  # "bn1" -> C, ..., "downsample.1" -> C

    @property
    def downsample(self) -> bool:
        return "downsample.1" in self.norms


@dataclass(frozen=True)
class Topology:
    """A ResNet's blocks in forward order, with the stem's channels."""

    block: BlockType
    stem_channels: int
    blocks: tuple[BlockShape, ...]
    num_stages: int

    @cached_property
    def by_name(self) -> dict[str, BlockShape]:
        """Blocks keyed by their module name ("layer2.0")."""
        return {b.name: b for b in self.blocks}

    def stage_blocks(self, stage: int) -> list[BlockShape]:
        return [b for b in self.blocks if b.stage == stage]

    def norm_slots(self) -> dict[str, int]:
        """Every normalization slot of the network in forward order, with its channel count."""
        slots = {"bn1": self.stem_channels}
        for block in self.blocks:
            for rel, channels in block.norms.items():
                slots[f"{block.name}.{rel}"] = channels
        return slots


def resnet_topology(
    block: BlockType,
    depths: list[int],
    widths: list[int],
    groups: int = 1,
    width_per_group: int = 64,
) -> Topology:
    """Blocks of a torchvision-style ResNet (stage 1 stride 1, later stages stride 2 at their first block)."""
    expansion = EXPANSION[block]
    stem = widths[0]
    in_ch = stem
    blocks = []
    number = 0
    for stage, (depth, planes) in enumerate(zip(depths, widths, strict=True), start=1):
        for index in range(depth):
            number += 1
            stride = 2 if (stage > 1 and index == 0) else 1
            out_ch = planes * expansion
            if block == "basic":
                width = planes
                norms = {"bn1": width, "bn2": out_ch}
            else:
                width = int(planes * (width_per_group / 64.0)) * groups
                norms = {"bn1": width, "bn2": width, "bn3": out_ch}
            if stride != 1 or in_ch != out_ch:
                norms["downsample.1"] = out_ch
            blocks.append(
                BlockShape(f"layer{stage}.{index}", stage, index, number, in_ch, width, out_ch, stride, norms)
            )
            in_ch = out_ch
    return Topology(block, stem, tuple(blocks), len(depths))
