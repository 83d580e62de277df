"""Weight inheritance: a checkpoint's tensors into a network whose normalizers a plan changed, slot by slot.

When a plan puts IBN, Switchable Norm, GroupNorm or IN where the checkpoint had a BatchNorm, the new layer
keeps what that BatchNorm learned, so that fine-tuning candidates compares normalizers, not the damage each
did to the checkpoint. Everything is keyed on module names (a slot is the model's own dotted module name)
and module types, never on the network's structure.

What each target layer takes from the checkpoint's layer at the same name (C channels; a checkpoint layer
offers an affine over C channels and BN running statistics over channels [s, C): s = 0 for a BatchNorm,
s = k for an IBN with k IN channels, s = C for IN/GN/LN):

- BatchNorm: the affine, and the statistics of channels [s, C). From an IBN checkpoint slot ("the other way")
  the IN channels [0, k) have none: their running statistics start at mean 0, variance 1 and are estimated
  while fine-tuning (training normalizes with the batch) -- the slot is *partly inherited*.
- IBN (k IN channels): the affine for all C channels; the BN part [k, C) the statistics of those channels
  (IBN-Net §3.2: IN and BN halves keep the pretrained affine).
- Switchable Norm: the affine and the BN branch's running statistics; its six ratio logits start equal
  (`sn_init="equal"`, SN §3: 1/3 each) or toward BN (`sn_init="bn"`: softmax (0.05, 0.05, 0.9) for the mean
  and the variance), unless the checkpoint has SN ratios of its own. The affine overrides `last_gamma`'s zero.
- GroupNorm / LayerNorm / InstanceNorm (affine): the affine; the checkpoint's statistics are dropped. Without
  an affine the layer has nothing to take.
- Inserted SelfNorm starts as close to the identity as its definition allows: its gate is a sigmoid, which
  never reaches 1, so each attention unit's BatchNorm1d gets γ = 0 and β = logit(0.95): the gate is 0.95 for
  every input and channel (two_branch: f = g, so y = 0.95·x), its linear map keeps its default initialisation
  so that γ receives gradient from the first step. Inserted CrossNorm has no tensors: it is the identity in
  eval and while the policy leaves it off, and exchanges statistics when on, as defined.
- DSON (one branch per source domain): from a BatchNorm, its affine and running statistics into every
  domain branch; the BN/IN mixture weights keep their initial value, so the slot is *partly inherited*.
- Everything else (convolutions, the classifier) is copied by name and shape. A classifier whose output
  count differs (1000 ImageNet classes, 10 here) is new, as every fine-tuning recipe does.

A slot is *inherited* when every tensor group it has (affine, statistics, ratios) came whole from the
checkpoint, *partly inherited* when some did, *new* when none did (or it has no tensors). Unused checkpoint
tensors and missing ones (a non-plan-added slot or tensor the checkpoint lacks, or has in another shape) are
an error unless `strict=False`, and are then listed. Layers the plan adds to the plain backbone (after-
addition norms, inserted modules: `NormPlan.added`) are new by design, never missing; layers the checkpoint's
own plan added (its `Checkpoint.added`) may be dropped by a plan without them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from normsearch.arch.plan import NormPlan
from normsearch.errors import NormsearchError
from normsearch.models.weights import Checkpoint, load_weights
from normsearch.norms import DSON, IBN, CrossNorm, SelfNorm, SwitchNorm2d

Status = Literal["inherited", "partly inherited", "new"]
SN_INIT = ("equal", "bn")
SN_BN_SHARE = 0.9  # sn_init="bn": softmax weight of the BN statistics, the rest split between IN and LN
SELFNORM_GATE = 0.95  # the gate an inserted SelfNorm starts at (a sigmoid: 1 is out of reach)
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_NORM_KEYS += ("mean_weight", "var_weight")  # SwitchNorm's ratio logits


@dataclass(frozen=True)
class SlotInheritance:
    """What one normalizer (or inserted module) received: status, its kind, the checkpoint's kind there."""

    name: str
    status: Status
    kind: str
    source: str  # the checkpoint's layer there: bn, ibn(IN 0-31), sn, affine, none, -
    detail: str


@dataclass
class InheritReport:
    """The outcome of one `inherit` call, per slot and overall; `describe()` is what records keep."""

    source: str
    slots: dict[str, SlotInheritance] = field(default_factory=dict)
    copied: int = 0  # other tensors (convolutions, classifier) copied by name
    other: int = 0  # other tensors in the model
    head: str | None = None  # why the classifier is new, when it is
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # the checkpoint's own added layers this plan lacks

    def counts(self) -> dict[str, int]:
        """How many slots are inherited, partly inherited and new."""
        out = {"inherited": 0, "partly inherited": 0, "new": 0}
        for slot in self.slots.values():
            out[slot.status] += 1
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for records: counts, the other tensors, the head, what was not used."""
        return {
            **self.counts(),
            "other_tensors": f"{self.copied}/{self.other}",
            "head": self.head or "inherited",
            "unused": list(self.unused),
            "missing": list(self.missing),
        }

    def summary(self) -> str:
        """One line: slot counts, other tensors, head."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        head = f"; classifier new ({self.head})" if self.head else ""
        return f"from {self.source}: slots {counts}; other tensors {self.copied}/{self.other} copied{head}"


def apply_weights(
    model: nn.Module,
    plan: NormPlan,
    weights: str | Path | Checkpoint | Mapping[str, torch.Tensor],
    sn_init: str = "equal",
) -> InheritReport:
    """Load `weights` (see `load_weights`) into `model`, built from `plan`, with weight inheritance and the
    plan's `backbone.strict`; the modules the plan adds (`plan.added`) are new by design. The report is
    also kept as `model.inheritance`."""
    backbone = plan.need_backbone()
    checkpoint = load_weights(weights, backbone)
    report = inherit(model, checkpoint, added=plan.added, strict=backbone.strict, sn_init=sn_init)
    model.inheritance = report
    return report


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, DSON):
        return "dson"
    if isinstance(module, IBN):
        return "ibn"
    if isinstance(module, SwitchNorm2d):
        return "sn"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.GroupNorm):
        return "ln" if module.num_groups == 1 else "gn"
    if isinstance(module, nn.InstanceNorm2d):
        return "in"
    if isinstance(module, nn.LayerNorm):
        return "ln"
    if isinstance(module, SelfNorm | CrossNorm):
        return type(module).__name__.lower()
    return None


@torch.no_grad()
def inherit(
    model: nn.Module,
    checkpoint: Checkpoint | Mapping[str, torch.Tensor],
    *,
    added: Collection[str] = (),
    strict: bool = True,
    sn_init: str = "equal",
) -> InheritReport:
    """Copy `checkpoint` into `model` with the per-slot rules of this module's docstring; returns what
    each slot received. Raises NormsearchError, naming the first keys, on unused or missing tensors when
    `strict`, and on a tensor whose shape differs when `strict`."""
    if sn_init not in SN_INIT:
        raise NormsearchError(f"sn_init: must be one of {'|'.join(SN_INIT)}, got {sn_init!r}")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_weights(checkpoint)
    report = InheritReport(checkpoint.source)
    handled, consumed = _inherit_norms(model, checkpoint.state_dict, set(added), sn_init, report)
    consumed |= _copy_others(model, checkpoint.state_dict, handled, report)
    for key in sorted(set(checkpoint.state_dict) - consumed):
        owner = key.rpartition(".")[0]
        if any(owner == a or owner.startswith(a + ".") for a in checkpoint.added):
            report.dropped.append(key)
        else:
            report.unused.append(key)
    if strict and (report.unused or report.missing):
        raise NormsearchError(_strict_message(report))
    return report


def _inherit_norms(
    model: nn.Module, state: Mapping[str, torch.Tensor], added: set[str], sn_init: str, report: InheritReport
) -> tuple[list[str], set[str]]:
    """Every normalizer and inserted module (not those inside one): its slot rule. Returns the handled
    module names and the checkpoint keys they consumed."""
    handled: list[str] = []
    consumed: set[str] = set()
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is None or any(name.startswith(p + ".") for p in handled):
            continue
        handled.append(name)
        keys = {k for k in state if k.startswith(name + ".")}
        inserted = kind in ("selfnorm", "crossnorm")
        if inserted:
            slot = _insert(name, module, kind, state, keys, report)
        elif kind == "dson":
            slot = _dson(name, module, state, keys, report)
        else:
            slot = _norm(name, module, kind, state, keys, sn_init, report)
        if not keys and name in added:
            if not inserted:
                slot = dataclasses.replace(slot, detail="added by this plan: its own initialisation")
        elif not keys and slot.status == "new" and _has_tensors(module):
            report.missing.append(f"{name}.*")
        consumed |= keys
        report.slots[name] = slot
    return handled, consumed


def _copy_others(
    model: nn.Module, state: Mapping[str, torch.Tensor], handled: list[str], report: InheritReport
) -> set[str]:
    """Every other tensor (convolutions, the classifier) by name and shape; returns the keys consumed. A
    classifier whose output count differs is new (`report.head`)."""
    head = _head(model)
    consumed: set[str] = set()
    for key, tensor in model.state_dict().items():
        if any(key.startswith(p + ".") for p in handled):
            continue
        report.other += 1
        if key not in state:
            report.missing.append(key)
            continue
        consumed.add(key)
        source = state[key]
        if source.shape == tensor.shape:
            tensor.copy_(source)
            report.copied += 1
        elif head is not None and key.startswith(head[0] + ".") and source.shape[1:] == tensor.shape[1:]:
            report.head = f"the checkpoint has {source.shape[0]} outputs, this model {head[1].out_features}"
        else:
            report.missing.append(f"{key} (checkpoint {tuple(source.shape)}, model {tuple(tensor.shape)})")
    return consumed


def _strict_message(report: InheritReport) -> str:
    def some(keys: list[str]) -> str:
        shown = ", ".join(keys[:3])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")

    parts = []
    if report.unused:
        parts.append(f"{len(report.unused)} checkpoint tensor(s) unused: {some(report.unused)}")
    if report.missing:
        parts.append(f"{len(report.missing)} missing from the checkpoint: {some(report.missing)}")
    return (
        f"weights {report.source}: {'; '.join(parts)}; backbone.strict: false loads the rest and lists them"
    )


def _has_tensors(module: nn.Module) -> bool:
    return bool(module.state_dict())


def _head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The classifier: the last nn.Linear in module order."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _channels(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else int(tensor.shape[0])


def _describe_source(src: dict[str, torch.Tensor]) -> tuple[str, int]:
    """The checkpoint layer's kind and the first channel with running statistics."""
    if not src:
        return "-", 0
    c = _channels(src.get("weight")) or _channels(src.get("running_mean")) or 0
    stats = _channels(src.get("running_mean"))
    first = c if stats is None else c - stats
    if "mean_weight" in src:
        return "sn", first
    if stats is None:
        return ("affine" if "weight" in src else "none"), first
    return ("bn" if first == 0 else f"ibn(IN 0-{first - 1})"), first


def _norm(
    name: str,
    module: nn.Module,
    kind: str,
    state: Mapping[str, torch.Tensor],
    keys: set[str],
    sn_init: str,
    report: InheritReport,
) -> SlotInheritance:
    src = {k[len(name) + 1 :]: state[k] for k in keys}
    for extra in sorted(set(src) - set(_NORM_KEYS)):
        report.unused.append(f"{name}.{extra}")
    source, first = _describe_source(src)
    groups: dict[str, str] = {}  # tensor group -> full | part | none
    notes: list[str] = []
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        groups["affine"] = "none"
        if (
            "weight" in src
            and "bias" in src
            and _fits(name, "weight", src["weight"], weight, report)
            and _fits(name, "bias", src["bias"], module.bias, report)
        ):
            weight.copy_(src["weight"])
            module.bias.copy_(src["bias"])
            groups["affine"] = "full"
    running = getattr(module, "running_mean", None)
    if kind in ("bn", "ibn", "sn") and isinstance(running, torch.Tensor) and running.numel():
        groups["statistics"] = _statistics(name, module, kind, src, first, report, notes)
    elif "running_mean" in src:
        notes.append("statistics dropped")
    if kind == "sn":
        if module.mode == "soft":
            groups["ratios"] = _sn_ratios(name, module, src, sn_init, report, notes)
        elif "mean_weight" in src:
            notes.append("ratios: the plan's hard choice")
    elif "mean_weight" in src:
        notes.append("SN ratios dropped")
    status = _status(groups)
    taken = [g for g, v in groups.items() if v == "full"]
    text = " + ".join(taken) if taken else "nothing"
    detail = f"{text} from {source}" if source != "-" else "not in the checkpoint"
    if not groups:
        detail = "no tensors" + (f"; the checkpoint's {source} is not used" if source != "-" else "")
    return SlotInheritance(name, status, kind, source, "; ".join([detail, *notes]))


def _dson(
    name: str, module: DSON, state: Mapping[str, torch.Tensor], keys: set[str], report: InheritReport
) -> SlotInheritance:
    """DSON from a checkpoint's BatchNorm: its affine and running statistics into every domain branch
    (`DSON.inherit_bn`); from a checkpoint's DSON of the same shape: every tensor."""
    src = {k[len(name) + 1 :]: state[k] for k in keys}
    own = module.state_dict()
    if src and set(src) == set(own) and all(src[k].shape == v.shape for k, v in own.items()):
        module.load_state_dict(src)
        return SlotInheritance(name, "inherited", "dson", "dson", "every tensor from the checkpoint's dson")
    bn = ("weight", "bias", "running_mean", "running_var")
    c = module.num_channels
    if all(k in src and src[k].shape == (c,) for k in bn):
        module.inherit_bn(*(src[k] for k in bn))
        report.unused.extend(f"{name}.{k}" for k in sorted(set(src) - {*bn, "num_batches_tracked"}))
        note = f"affine + statistics from bn into each of {module.num_domains} domain branches"
        return SlotInheritance(name, "partly inherited", "dson", "bn", note + "; mixture weights new")
    report.unused.extend(sorted(keys))
    return SlotInheritance(name, "new", "dson", "-" if not src else "other", "not inherited")


def _status(groups: dict[str, str]) -> Status:
    if groups and all(v == "full" for v in groups.values()):
        return "inherited"
    if all(v == "none" for v in groups.values()):
        return "new"
    return "partly inherited"


def _fits(name: str, key: str, source: torch.Tensor, target: torch.Tensor, report: InheritReport) -> bool:
    if source.shape == target.shape:
        return True
    report.missing.append(f"{name}.{key} (checkpoint {tuple(source.shape)}, model {tuple(target.shape)})")
    return False


def _statistics(
    name: str,
    module: nn.Module,
    kind: str,
    src: dict[str, torch.Tensor],
    first: int,
    report: InheritReport,
    notes: list[str],
) -> str:
    """Copy the running statistics the checkpoint has for the channels this layer keeps them for."""
    if "running_mean" not in src or "running_var" not in src:
        if "running_mean" in src or "running_var" in src:  # half a pair is a damaged checkpoint
            report.missing.append(f"{name}.{'running_var' if 'running_mean' in src else 'running_mean'}")
        return "none"
    channels = module.num_channels if kind in ("ibn", "sn") else module.num_features
    if (_channels(src.get("weight")) or channels) != channels:
        return "none"  # a channel mismatch is reported by the affine
    start = module.num_in if kind == "ibn" else 0  # this layer's statistics cover channels [start, C)
    lo = max(start, first)
    if "num_batches_tracked" in src:
        module.num_batches_tracked.copy_(src["num_batches_tracked"])
    if lo >= channels:
        notes.append("statistics new")
        return "none"
    module.running_mean[lo - start :].copy_(src["running_mean"][lo - first :])
    module.running_var[lo - start :].copy_(src["running_var"][lo - first :])
    if lo > start:
        notes.append(f"statistics of channels {start}-{lo - 1} new (IN in the checkpoint)")
        return "part"
    return "full"


def _sn_ratios(
    name: str,
    module: SwitchNorm2d,
    src: dict[str, torch.Tensor],
    sn_init: str,
    report: InheritReport,
    notes: list[str],
) -> str:
    if "mean_weight" in src and "var_weight" in src:
        if _fits(name, "mean_weight", src["mean_weight"], module.mean_weight, report):
            module.mean_weight.copy_(src["mean_weight"])
            module.var_weight.copy_(src["var_weight"])
            return "full"
        return "none"
    if sn_init == "bn":
        rest = (1.0 - SN_BN_SHARE) / 2
        logits = torch.tensor([math.log(rest), math.log(rest), math.log(SN_BN_SHARE)])
        module.mean_weight.copy_(logits)
        module.var_weight.copy_(logits)
        notes.append(f"ratios new (toward BN: {SN_BN_SHARE})")
    else:
        notes.append("ratios new (equal)")
    return "none"


def _insert(
    name: str,
    module: nn.Module,
    kind: str,
    state: Mapping[str, torch.Tensor],
    keys: set[str],
    report: InheritReport,
) -> SlotInheritance:
    own = module.state_dict()
    full = {f"{name}.{k}" for k in own}
    if own and keys == full and all(state[f"{name}.{k}"].shape == v.shape for k, v in own.items()):
        module.load_state_dict({k: state[f"{name}.{k}"] for k in own})
        return SlotInheritance(name, "inherited", kind, kind, f"every tensor from the checkpoint's {kind}")
    report.unused.extend(sorted(keys))
    if isinstance(module, SelfNorm):
        beta = math.log(SELFNORM_GATE / (1.0 - SELFNORM_GATE))
        for unit in (module.g, module.f):
            if unit is not None:
                unit.bn.weight.zero_()
                unit.bn.bias.fill_(beta)
        return SlotInheritance(name, "new", kind, "-", f"starts near the identity: y = {SELFNORM_GATE}·x")
    return SlotInheritance(name, "new", kind, "-", "no tensors; identity in eval and while off")
