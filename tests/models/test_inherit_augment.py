"""Weight inheritance into DSON (every domain branch from the checkpoint's BatchNorm) and past MixStyle/DSU
(inserted, no tensors)."""

from __future__ import annotations

import torch

from normsearch.arch import ArchConfig
from normsearch.models import build_model
from normsearch.models.inherit import inherit

MINI = {"preset": "resnet-mini"}


def _trained_bn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    plain = build_model(ArchConfig.from_dict({"backbone": MINI}))
    with torch.no_grad():
        for module in plain.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2), module.bias.uniform_(-1, 1)
                module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
    return plain.state_dict()


def test_dson_takes_the_batchnorm_into_every_branch_and_inserts_are_new() -> None:
    state = _trained_bn_state()
    arch = ArchConfig.from_dict(
        {"backbone": MINI, "norm": {"dson": {"domains": 3, "stages": [2]}, "mixstyle": {}, "dsu": {}}}
    )
    model = build_model(arch)
    report = inherit(model, state, added=arch.resolve().added, strict=True)
    slot = report.slots["layer2.0.bn1"]
    assert slot.status == "partly inherited" and slot.kind == "dson" and slot.source == "bn"
    layer = model.get_submodule("layer2.0.bn1")
    for d in range(3):
        assert torch.equal(layer.weight[d], state["layer2.0.bn1.weight"])
        assert torch.equal(layer.running_var[d], state["layer2.0.bn1.running_var"])
    assert report.slots["layer1.0.bn1"].status == "inherited"  # stage 1 stays BN
    assert not report.unused and not report.missing
