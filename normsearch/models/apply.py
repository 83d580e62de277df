"""`apply_plan`: put a NormPlan into any network: a torchvision or timm model, or a user's own nn.Module.

Norm slots are replaced by their dotted module name (a plain ``bn`` on a BatchNorm slot keeps the
network's own layer, so an all-BN plan changes nothing). After-addition norms and CrossNorm/SelfNorm:

- torchvision-style ResNet blocks (conv1/bn1/.../relu/downsample, our ResNet's too) get them as block
  attributes and the shared `block_forward`, as before;
- any other traced network is rewritten as a torch.fx GraphModule with the modules called at the
  insertion points `arch.families.analyze` found (`models/insert.py`);
- a network that cannot be traced takes per-slot plans only; an insertion is one line saying why not.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from normsearch.arch.families import Analysis, analyze
from normsearch.arch.plan import INSERT_KINDS, NormPlan
from normsearch.arch.trace import slot_channels
from normsearch.errors import NormsearchError
from normsearch.models.blocks import block_forward
from normsearch.models.insert import insert_modules
from normsearch.models.layers import slot_norm
from normsearch.norms import INPUT_NORM, make_norm


def _channels(module: nn.Module) -> int | None:
    try:
        return slot_channels(module)
    except (AttributeError, TypeError, IndexError):
        return None


def _input_norm_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return type(model).forward(model, model.input_norm(x))


def _resnet_block(module: nn.Module) -> bool:
    """A torchvision-style ResNet block, which `block_forward` can run."""
    names = ("conv1", "bn1", "conv2", "bn2", "relu")
    return all(isinstance(getattr(module, a, None), nn.Module) for a in names) and hasattr(
        module, "downsample"
    )


def _extras(plan: NormPlan, analysis: Analysis | None) -> dict[str, tuple[str, str]]:
    """Every module the plan adds, name -> (slot or insert name, anchor key), post norms first."""
    out: dict[str, tuple[str, str]] = {}
    units = {u.child("post"): u.name for u in analysis.structure.units} if analysis else {}
    for slot in plan.slots:
        if analysis is None or slot in analysis.structure.slots:
            continue
        out[slot] = (slot, slot if slot in analysis.anchors else f"{units.get(slot, '')}|post")
    if analysis is not None:
        unit_of = {u.child(k): u.name for u in analysis.structure.units for k in INSERT_KINDS}
        for name, insert in plan.inserts.items():
            out[name] = (name, f"{unit_of.get(name, '')}|{insert.position}")
    return out


def apply_plan(model: nn.Module, plan: NormPlan) -> nn.Module:
    """Put the plan's normalizers into `model` and return it (the same object, or a GraphModule when
    modules had to be inserted into a network that is not a torchvision-style ResNet).

    A slot the model lacks, or whose channel count differs from the plan's, is an error naming it.
    """
    modules = dict(model.named_modules())
    posts = [s for s in plan.slots if s not in modules]
    for slot in posts:
        if not slot.endswith((".post", "_post")):
            raise NormsearchError(f"apply_plan: the model has no norm slot {slot!r}")
    added = posts + list(plan.inserts)
    owners = {name.rpartition(".")[0] for name in added}
    classic = all(o in modules and _resnet_block(modules[o]) for o in owners) and all(
        n.endswith((".post", *(f".{k}" for k in INSERT_KINDS))) for n in added
    )
    analysis = analyze(model, with_shapes=False) if added and not classic else None
    _replace_slots(model, modules, plan, set(posts))
    if added and classic:
        _add_to_blocks(modules, plan, posts, owners)
    elif added:
        assert analysis is not None
        model = _add_by_graph(model, plan, analysis)
    if plan.input_norm == "instance":
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        model.input_norm = make_norm(INPUT_NORM, conv.in_channels if conv is not None else 3)
        model.forward = types.MethodType(_input_norm_forward, model)
    model.plan = plan
    return model


def _replace_slots(model: nn.Module, modules: dict[str, nn.Module], plan: NormPlan, posts: set[str]) -> None:
    """Every slot the model has gets the plan's layer (its channel count checked first)."""
    for slot, spec in plan.slots.items():
        if slot in posts:
            continue
        current = _channels(modules[slot])
        if current is not None and current != plan.channels[slot]:
            raise NormsearchError(
                f"apply_plan: slot {slot!r} has {current} channels in the model "
                f"but {plan.channels[slot]} in the plan"
            )
        layer = slot_norm(spec, plan.channels[slot], modules[slot])
        if layer is not modules[slot]:
            model.set_submodule(slot, layer)


def _add_to_blocks(modules: dict[str, nn.Module], plan: NormPlan, posts: list[str], owners: set[str]) -> None:
    """After-addition norms and inserted modules as attributes of torchvision-style ResNet blocks, which
    then run `block_forward`."""
    for slot in posts:
        modules[slot.rpartition(".")[0]].post = make_norm(plan.slots[slot], plan.channels[slot])
    for name, insert in plan.inserts.items():
        block_name, _, module_name = name.rpartition(".")
        block = modules[block_name]
        setattr(block, module_name, make_norm(insert.spec, insert.channels))
        setattr(block, f"{module_name}_at", insert.position)
    for block_name in owners:
        modules[block_name].forward = types.MethodType(block_forward, modules[block_name])


def _add_by_graph(model: nn.Module, plan: NormPlan, analysis: Analysis) -> nn.Module:
    """After-addition norms and inserted modules called at their points of the traced graph."""
    extra = {}
    for name, (source, key) in _extras(plan, analysis).items():
        spec = plan.slots[source] if source in plan.slots else plan.inserts[source].spec
        channels = plan.channels[source] if source in plan.channels else plan.inserts[source].channels
        extra[name] = (make_norm(spec, channels), key)
    return insert_modules(model, analysis, extra)
