"""A ResNet family built from an ArchConfig; every norm slot is filled through `make_norm(plan[slot], C)`.

Module names match torchvision's ResNet (conv1/bn1/layer{i}.{j}.bn{k}/downsample.1/fc), so a plan's slot
names, state_dict keys and `apply_plan` all line up. CIFAR stem: 3×3 conv, stride 1, no max-pool;
ImageNet stem: 7×7 conv, stride 2, and a 3×3 max-pool.
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.arch.plan import NormPlan
from normsearch.arch.topology import BlockShape, Topology
from normsearch.models.blocks import SqueezeExcitation, block_forward
from normsearch.models.layers import slot_norm
from normsearch.norms import INPUT_NORM, make_norm


class Block(nn.Module):
    """A BasicBlock or Bottleneck whose norms, post norm and inserted modules come from the plan."""

    def __init__(
        self, shape: BlockShape, plan: NormPlan, bottleneck: bool, groups: int, se: bool = False
    ) -> None:
        super().__init__()

        def norm(rel: str) -> nn.Module:
            slot = f"{shape.name}.{rel}"
            return slot_norm(plan[slot], plan.channels[slot])

        w, out = shape.width, shape.out_channels
        if bottleneck:
            self.conv1 = nn.Conv2d(shape.in_channels, w, 1, bias=False)
            self.bn1 = norm("bn1")
            self.conv2 = nn.Conv2d(w, w, 3, shape.stride, 1, groups=groups, bias=False)
            self.bn2 = norm("bn2")
            self.conv3 = nn.Conv2d(w, out, 1, bias=False)
            self.bn3 = norm("bn3")
        else:
            self.conv1 = nn.Conv2d(shape.in_channels, w, 3, shape.stride, 1, bias=False)
            self.bn1 = norm("bn1")
            self.conv2 = nn.Conv2d(w, out, 3, 1, 1, bias=False)
            self.bn2 = norm("bn2")
        if se:
            self.se = SqueezeExcitation(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if shape.downsample:
            conv = nn.Conv2d(shape.in_channels, out, 1, shape.stride, bias=False)
            self.downsample = nn.Sequential(conv, norm("downsample.1"))
        if f"{shape.name}.post" in plan:
            self.post = norm("post")
        for name, insert in plan.block_inserts(shape.name).items():
            setattr(self, name, make_norm(insert.spec, insert.channels))
            setattr(self, f"{name}_at", insert.position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_forward(self, x)


class ResNet(nn.Module):
    """ResNet over a Topology, with norms from a NormPlan. `input_norm` standardizes each image first
    (per image, per channel, no parameters) when the plan asks for the `instance` input baseline."""

    def __init__(
        self,
        topo: Topology,
        plan: NormPlan,
        num_classes: int,
        in_channels: int,
        stem: str,
        groups: int = 1,
        zero_init_last: bool = False,
        se: bool = False,
    ) -> None:
        super().__init__()
        self.input_norm = make_norm(INPUT_NORM, in_channels) if plan.input_norm == "instance" else None
        c = topo.stem_channels
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, c, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = slot_norm(plan["bn1"], plan.channels["bn1"])
        self.relu = nn.ReLU(inplace=True)
        bottleneck = topo.block == "bottleneck"
        for stage in range(1, topo.num_stages + 1):
            blocks = [Block(shape, plan, bottleneck, groups, se) for shape in topo.stage_blocks(stage)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = topo.num_stages
        self.plan = plan  # the trainer reads its CrossNorm and SwitchNorm schedules
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(topo.blocks[-1].out_channels, num_classes)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Block):
                    last = m.bn3 if hasattr(m, "bn3") else m.bn2
                    if isinstance(getattr(last, "weight", None), nn.Parameter):
                        nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
