"""Placement of MixStyle, DSU (inserted per stage or unit) and DSON (BatchNorm slots made domain-specific)."""

from __future__ import annotations

import pytest
import torch

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.norms import DSON, DSU, MixStyle, set_domains
from normsearch.norms.domains import routed_layers

TINY = {"backbone": {"preset": "resnet-tiny"}}  # three stages of two basic blocks


def _plan(norm: dict):
    return ArchConfig.from_dict({**TINY, "norm": norm}).resolve()


def test_mixstyle_defaults_to_after_every_stage_but_the_last() -> None:
    plan = _plan({"mixstyle": {}})
    assert list(plan.inserts) == ["layer1.1.mixstyle", "layer2.1.mixstyle"]
    insert = plan.inserts["layer2.1.mixstyle"]
    assert insert.position == "post" and insert.channels == 32
    assert str(insert.spec) == "mixstyle:alpha=0.1,mix=random,p=0.5"


def test_dsu_on_every_unit_of_the_listed_stages() -> None:
    plan = _plan({"dsu": {"p": 0.3, "units": "all", "stages": [1, 3], "position": "residual"}})
    assert list(plan.inserts) == ["layer1.0.dsu", "layer1.1.dsu", "layer3.0.dsu", "layer3.1.dsu"]
    assert {str(i.spec) for i in plan.inserts.values()} == {"dsu:p=0.3"}


def test_out_of_range_stage_and_missing_position_are_one_line_errors() -> None:
    with pytest.raises(NormsearchError, match=r"norm\.mixstyle\.stages: stage 4 out of range"):
        _plan({"mixstyle": {"stages": [4]}})
    dense = {"backbone": {"preset": "densenet-mini"}, "norm": {"dsu": {}}}
    with pytest.raises(NormsearchError, match=r"norm\.dsu\.position: 'post' does not exist"):
        ArchConfig.from_dict(dense)


def test_dson_replaces_the_batchnorm_slots_it_covers() -> None:
    plan = _plan({"dson": {"domains": 3, "stages": [2], "stem": False}, "ibn": {"stages": [2]}})
    kinds = {slot: spec.kind for slot, spec in plan.slots.items()}
    assert kinds["bn1"] == "bn" and kinds["layer1.0.bn1"] == "bn"
    assert kinds["layer2.0.bn1"] == "ibn"  # another rule's slot stays
    assert kinds["layer2.0.bn2"] == "dson" and kinds["layer2.0.downsample.1"] == "dson"
    assert str(plan.slots["layer2.1.bn2"]) == "dson:domains=3"
    stage2 = {s: k for s, k in kinds.items() if s.startswith("layer2.")}
    assert stage2 == {
        "layer2.0.bn1": "ibn",
        "layer2.0.bn2": "dson",
        "layer2.0.downsample.1": "dson",
        "layer2.1.bn1": "ibn",
        "layer2.1.bn2": "dson",
    }
    assert {k for s, k in kinds.items() if not s.startswith("layer2.")} == {"bn"}


def test_built_network_runs_its_modules_where_the_plan_puts_them() -> None:
    arch = ArchConfig.from_dict({**TINY, "norm": {"mixstyle": {"p": 1.0}, "dsu": {"p": 1.0}, "dson": {}}})
    model = build_model(arch)
    assert isinstance(model.layer1[1].mixstyle, MixStyle) and isinstance(model.layer3[1].dsu, DSU)
    assert isinstance(model.layer2[0].bn1, DSON)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    plain = ArchConfig.from_dict({**TINY, "norm": {"dson": {}}})
    reference = build_model(plain)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():  # eval: MixStyle and DSU are the identity
        assert torch.equal(model(x), reference(x))
    model.train()
    set_domains(model, torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(model(x)).all()


def test_routed_layers_check_the_number_of_sources() -> None:
    model = build_model(ArchConfig.from_dict({**TINY, "norm": {"dson": {"domains": 2}}}))
    assert routed_layers(model, 2) == 15
    with pytest.raises(NormsearchError, match=r"set norm\.dson\.domains to 3"):
        routed_layers(model, 3)
    cross = build_model(ArchConfig.from_dict({**TINY, "norm": {"mixstyle": {"mix": "crossdomain"}}}))
    with pytest.raises(NormsearchError, match="two or more source domains"):
        routed_layers(cross, 1)
    assert routed_layers(build_model(ArchConfig.from_dict({**TINY, "norm": {"mixstyle": {}}})), 1) == 0
