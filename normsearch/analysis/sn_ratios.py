"""The importance ratios each Switchable Normalization layer learned (Luo et al., ICLR 2019, Fig. 5).

For every SN slot: the ratios (w_in, w_ln, w_bn) of the mean and of the variance (softmax of the control
parameters, SN Eq. 5; SparsestMax for Sparse SN; one-hot for a hard layer) and the hard choice their argmax
makes (SN §4.1.4), the picture of SN's Fig. 5 for the user's own network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normsearch.norms.switchable import SwitchNorm2d

STATS = ("in", "ln", "bn")


@dataclass(frozen=True)
class SNRatios:
    """One SN layer: its slot, mode, the mean and variance ratios in the order IN, LN, BN."""

    slot: str
    mode: str
    mean: tuple[float, float, float]
    var: tuple[float, float, float]

    @property
    def choice(self) -> str:
        """The hard choice "mean/var", e.g. "bn/in" (the argmax of each ratio vector)."""
        mean = max(range(3), key=lambda i: self.mean[i])
        var = max(range(3), key=lambda i: self.var[i])
        return f"{STATS[mean]}/{STATS[var]}"


@torch.no_grad()
def sn_ratios(model: nn.Module, slots: list[str]) -> list[SNRatios]:
    """The ratios of every Switchable Norm layer among `slots` (module names), in their order."""
    out = []
    for slot in slots:
        module = model.get_submodule(slot)
        if isinstance(module, SwitchNorm2d):
            mean, var = module.ratios()
            out.append(
                SNRatios(
                    slot,
                    module.mode,
                    tuple(float(v) for v in mean.detach().cpu()),  # type: ignore[arg-type]
                    tuple(float(v) for v in var.detach().cpu()),  # type: ignore[arg-type]
                )
            )
    return out
