"""The learned Switchable Norm ratios (SN Fig. 5): softmax of the control parameters, and the hard choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normsearch.analysis.sn_ratios import sn_ratios
from normsearch.norms import make_norm


def test_soft_ratios_are_the_softmax_and_the_choice_their_argmax() -> None:
    model = nn.Sequential()
    model.add_module("a", make_norm("sn", 4))
    model.add_module("b", make_norm("sn:mode=hard,mean=in,var=bn", 4))
    model.add_module("c", nn.BatchNorm2d(4))
    with torch.no_grad():
        model.a.mean_weight.copy_(torch.tensor([0.0, 1.0, 3.0]))
        model.a.var_weight.copy_(torch.tensor([2.0, 0.0, 0.0]))
    rows = sn_ratios(model, ["a", "b", "c"])
    assert [r.slot for r in rows] == ["a", "b"]
    soft = torch.tensor([0.0, 1.0, 3.0]).softmax(0).tolist()
    assert list(rows[0].mean) == pytest.approx(soft) and rows[0].choice == "bn/in"
    assert rows[1].mean == (1.0, 0.0, 0.0) and rows[1].var == (0.0, 0.0, 1.0) and rows[1].choice == "in/bn"
