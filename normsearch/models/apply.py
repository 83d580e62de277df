"""`apply_plan`: rewrite a torchvision ResNet in place so that every slot holds the plan's normalizer.

Works for resnet18/34/50/101, resnext50_32x4d and wide_resnet50_2 (and any model with the same module
names). Norm modules are replaced by slot name; after-addition norms and CrossNorm/SelfNorm insertions
are added to the blocks, whose forward is replaced by the shared `block_forward`.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from normsearch.arch.plan import NormPlan
from normsearch.errors import NormsearchError
from normsearch.models.blocks import block_forward
from normsearch.norms import make_norm


def _channels(module: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None


def _input_norm_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return type(model).forward(model, model.input_norm(x))


def apply_plan(model: nn.Module, plan: NormPlan) -> nn.Module:
    """Put the plan's normalizers into `model` (a torchvision-style ResNet) and return it.

    A slot the model lacks, or whose channel count differs from the plan's, is an error naming it.
    """
    modules = dict(model.named_modules())
    blocks: set[str] = set()
    for slot, spec in plan.slots.items():
        block_name, _, rel = slot.rpartition(".")
        if rel == "post":
            if block_name not in modules:
                raise NormsearchError(f"apply_plan: the model has no block {block_name!r} for slot {slot!r}")
            modules[block_name].post = make_norm(spec, plan.channels[slot])
            blocks.add(block_name)
            continue
        if slot not in modules:
            raise NormsearchError(f"apply_plan: the model has no norm slot {slot!r}")
        current = _channels(modules[slot])
        if current is not None and current != plan.channels[slot]:
            raise NormsearchError(
                f"apply_plan: slot {slot!r} has {current} channels in the model "
                f"but {plan.channels[slot]} in the plan"
            )
        model.set_submodule(slot, make_norm(spec, plan.channels[slot]))
    for name, insert in plan.inserts.items():
        block_name, _, module_name = name.rpartition(".")
        if block_name not in modules:
            raise NormsearchError(f"apply_plan: the model has no block {block_name!r} for {name!r}")
        block = modules[block_name]
        setattr(block, module_name, make_norm(insert.spec, insert.channels))
        setattr(block, f"{module_name}_at", insert.position)
        blocks.add(block_name)
    for block_name in blocks:
        block = modules[block_name]
        block.forward = types.MethodType(block_forward, block)
    if plan.input_norm == "instance":
        in_channels = model.conv1.in_channels if hasattr(model, "conv1") else 3
        model.input_norm = nn.InstanceNorm2d(in_channels, affine=False)
        model.forward = types.MethodType(_input_norm_forward, model)
    model.plan = plan
    return model
