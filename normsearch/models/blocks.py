"""The residual-block forward shared by our ResNets and by torchvision ResNets that a plan was applied to.

Both use torchvision's attribute names (conv1, bn1, ..., downsample), so one function runs either, with
the optional extras a plan adds: `post` (a norm after the addition, before the ReLU, as IBN-b does) and
the inserted `crossnorm` / `selfnorm` modules at their positions (CNSN §3.4):
``pre`` = block input, ``residual`` = end of the residual branch before the add, ``identity`` = on the
shortcut, ``post`` = after the add. CrossNorm runs before SelfNorm where both sit at one position.
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.arch.plan import INSERT_KINDS


def _inserts(block: nn.Module, position: str, x: torch.Tensor) -> torch.Tensor:
    for name in INSERT_KINDS:
        module = getattr(block, name, None)
        if module is not None and getattr(block, f"{name}_at", None) == position:
            x = module(x)
    return x


def residual_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv-norm-relu ... conv-norm of a BasicBlock (2 convs) or Bottleneck (3 convs), then the block's
    squeeze-and-excitation when it has one (SE-ResNet: on the branch, before the addition)."""
    out = block.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    se = getattr(block, "se", None)
    return out if se is None else se(out)


class SqueezeExcitation(nn.Module):
    """SE (Hu et al., CVPR 2018) as IBN-Net's se_resnet_ibn release builds it: global average pool,
    Linear(C, C/r) without bias, ReLU, Linear(C/r, C) without bias, sigmoid, channel-wise scale (r = 16)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(int(channels / reduction), 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.fc(x.mean((2, 3)))
        return x * weight[:, :, None, None]


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a residual block with the plan's post norm and inserted modules."""
    x = _inserts(block, "pre", x)
    out = _inserts(block, "residual", residual_branch(block, x))
    identity = x if block.downsample is None else block.downsample(x)
    out = out + _inserts(block, "identity", identity)
    post = getattr(block, "post", None)
    if post is not None:
        out = post(out)
    out = _inserts(block, "post", out)
    return block.relu(out)
