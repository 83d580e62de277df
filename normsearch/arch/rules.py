"""The papers' placement rules, written once against a `Structure`: any family, one code path.

Precedence, lowest to highest (a later rule *replaces* what an earlier one put in a slot, as timm's block
overrides do): ``default`` < ``xbn`` < ``ibn`` < ``switchable`` < ``overrides``. CrossNorm and SelfNorm do
not fill norm slots; they insert modules, CrossNorm before SelfNorm where both sit at one position.
A key a rule leaves unset takes the family's released value (`Structure.released`).

- IBN-a (IBN-Net §3.2): the first norm of every `every`-th unit of each listed stage becomes
  ``ibn:ratio=R`` (default: every stage but the last; ResNet-50: 13 slots). DenseNet as released
  (densenet_ibn.py): norm1 of layers 1, 4, 7, ... of dense blocks 1-3, ratio 0.4, BN on the first
  ⌊0.6·C⌋ channels (``order: bn_in``); the ResNet release puts IN first (``order: in_bn``).
- IBN-b: IN(affine) on the stem norms and after the last addition of each listed stage (IBN-Net50-b: stages
  1-2, three IN layers). The paper defines it for residual networks; elsewhere the same rule reads: IN on
  the stem and on each listed stage's output (a dense block's concatenated features before its transition,
  a plain stage's last activation).
- XBN (XBNBlock §5.2.1): position P1/P2/P3 = the first / middle / last main-path norm of every `every`-th
  unit counted across the network (D2/D4/D8); a unit with a depthwise conv takes P2 at its depthwise
  norms (the released MobileNetV2/ShuffleNetV2 position), a unit with two norms P2 at the first (basic
  blocks: P1, P2 -> bn1, P3 -> bn2); plus the stem when `stem` (released: ResNet yes, mobile no); shortcut
  norms stay; GN groups clamp to C (and, when `groups` is left unset, fall to the largest count below the
  released one that divides C, e.g. 40 on a DenseNet's 80 channels).
- Switchable: every slot of the listed stages (units, transitions, head), and the stem when the rule covers
  the whole network, with γ of each unit's last SN zero-initialised (`last_gamma`), as the released SN
  ResNet does.
- CrossNorm/SelfNorm: one module per unit of the listed stages at `position`; units without that point
  (e.g. no shortcut to put `identity` on) are skipped, a family without it at all is an error.

Each rule is one function of a `Draft` (the plan being filled) in `RULES`, applied in that order; adding a
rule is adding one function to that list (and its key to `NormConfig`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from normsearch.arch.plan import CrossNormSchedule, Insert, NormPlan, SwitchSchedule
from normsearch.arch.rules_augment import augment_inserts, dson_slots
from normsearch.arch.structure import Structure, UnitInfo
from normsearch.errors import NormsearchError
from normsearch.norms.spec import NormSpec

if TYPE_CHECKING:
    from normsearch.arch.config import Backbone, CrossNormRule, NormConfig, SelfNormRule, SwitchableRule


def _need_structure(structure: Structure, key: str, source: str) -> None:
    if not structure.traced or not structure.units:
        why = (
            structure.note or "it has no units (residual blocks, dense layers or conv stages) to place it in"
        )
        raise NormsearchError(
            f"{source}: norm.{key}: cannot place this rule: {why}; give per-slot specs under "
            "norm.overrides instead"
        )


def xbn_targets(unit: UnitInfo, structure: Structure, position: int) -> list[str]:
    """The norms of `unit` that XBN position P1/P2/P3 names (see the module docstring)."""
    norms = list(unit.norms)
    if position == 1:
        return norms[:1]
    if position == 3:
        return norms[-1:]
    depthwise = [n for n in unit.norms + unit.shortcut if structure.slots[n].depthwise]
    if depthwise:
        return depthwise
    return norms[1:2] if len(norms) >= 3 else norms[:1]


def ibn_spec(ratio: float, order: str) -> NormSpec:
    """The IBN spec of one slot; the default order (``in_bn``) is left out of its text."""
    return (
        NormSpec.of("ibn", ratio=ratio) if order == "in_bn" else NormSpec.of("ibn", ratio=ratio, order=order)
    )


@dataclass
class Draft:
    """The plan while the rules fill it: slot -> spec (every slot starts at `norm.default`), inserted
    modules, and the trainer's schedules; plus the helpers every rule shares."""

    structure: Structure
    norm: NormConfig
    source: str
    slots: dict[str, NormSpec] = field(default_factory=dict)
    inserts: dict[str, Insert] = field(default_factory=dict)
    crossnorm: CrossNormSchedule | None = None
    switchable: SwitchSchedule | None = None

    def __post_init__(self) -> None:
        self.channels = {name: info.channels for name, info in self.structure.slots.items()}
        self.post_names = self.structure.post_slots()
        self.slots = {name: NormSpec.parse(self.norm.default) for name in self.channels}

    @property
    def last(self) -> int:
        return self.structure.num_stages

    def stages(self, key: str, given: list[int] | None, default: list[int]) -> list[int]:
        """The stages a rule covers (`given`, else `default`), each checked against this network."""
        _need_structure(self.structure, key, self.source)
        chosen = default if given is None else given
        for stage in chosen:
            if not 1 <= stage <= self.last:
                raise NormsearchError(
                    f"{self.source}: norm.{key}.stages: stage {stage} out of range; this backbone has "
                    f"stages 1-{self.last}"
                )
        return sorted(set(chosen))

    def slot_channels(self, slot: str) -> int:
        return self.channels.get(slot) or self.post_names[slot]

    def group_norm(self, slot: str, groups: int, key: str, adapt: bool = False) -> NormSpec:
        """GN on `slot`, its groups clamped to C as the released XBN code does; `adapt` (groups left to
        the family default): the largest count up to it that divides C."""
        c = self.slot_channels(slot)
        g = min(groups, c)
        if adapt:
            g = max(d for d in range(1, g + 1) if c % d == 0)
        if c % g:
            raise NormsearchError(
                f"{self.source}: {key}: groups={g} does not divide the {c} channels of slot {slot}"
            )
        return NormSpec.of("gn", groups=g)


def xbn_rule(draft: Draft) -> None:
    """XBNBlock §5.2.1: the batch-free norm (GN or IN) at P1/P2/P3 of every `every`-th unit (+ the stem)."""
    xbn, structure = draft.norm.xbn, draft.structure
    if xbn is None:
        return
    _need_structure(structure, "xbn", draft.source)
    released = structure.released
    targets = [
        t
        for u in structure.units
        if u.number % xbn.every == 0
        for t in xbn_targets(u, structure, xbn.position)
    ]
    if xbn.stem if xbn.stem is not None else released.xbn_stem:
        targets = structure.stem[:1] + targets
    groups = xbn.groups if xbn.groups is not None else released.xbn_groups
    for slot in targets:
        if xbn.bfn == "in":
            draft.slots[slot] = NormSpec.of("in", affine=bool(xbn.affine))
            continue
        spec = draft.group_norm(slot, groups, "norm.xbn.groups", adapt=xbn.groups is None)
        if xbn.affine is False:
            spec = NormSpec.of("gn", groups=spec.get("groups"), affine=False)
        draft.slots[slot] = spec


def ibn_a_rule(draft: Draft) -> None:
    """IBN-Net §3.2 (IBN-a): IBN on the first norm of every `every`-th unit of the listed stages, one
    ratio or one per stage (Table 5), in the family's released channel order unless given."""
    ibn = draft.norm.ibn
    if ibn is None or ibn.variant != "a":
        return
    released = draft.structure.released
    chosen = draft.stages("ibn", ibn.stages, list(range(1, draft.last)))
    ratio = ibn.ratio if ibn.ratio is not None else released.ibn_ratio
    ratios = ratio if isinstance(ratio, list) else [ratio] * len(chosen)
    if len(ratios) != len(chosen):
        raise NormsearchError(
            f"{draft.source}: norm.ibn.ratio: {len(ratios)} ratios for {len(chosen)} stages {chosen}; give "
            "one ratio per stage or a single number"
        )
    order = ibn.order or released.ibn_order
    every = ibn.every or released.ibn_every
    for stage, r in zip(chosen, ratios, strict=True):
        for unit in draft.structure.stage_units(stage):
            if unit.index % every == 0 and unit.norms:
                draft.slots[unit.norms[0]] = ibn_spec(r, order)


def ibn_b_rule(draft: Draft) -> None:
    """IBN-Net §3.2 (IBN-b): IN on the stem norms and after the last addition of each listed stage."""
    ibn = draft.norm.ibn
    if ibn is None or ibn.variant != "b":
        return
    chosen = draft.stages("ibn", ibn.stages, list(range(1, min(2, draft.last - 1) + 1)))
    for slot in draft.structure.stem:
        draft.slots[slot] = NormSpec("in")
    for stage in chosen:
        if stage in draft.structure.stage_posts:
            draft.slots[draft.structure.stage_posts[stage][0]] = NormSpec("in")


def switchable_rule(draft: Draft) -> None:
    """SN (Luo et al. 2019) and SSN: every slot of the listed stages, the stem when the rule covers the
    network, `last_gamma` on each unit's last norm as the released SN ResNet; the trainer's schedule."""
    sw, structure = draft.norm.switchable, draft.structure
    if sw is None:
        return
    if sw.stem if sw.stem is not None else sw.stages is None:
        for slot in structure.stem:
            draft.slots[slot] = _switch_spec(sw, slot)
    chosen = draft.stages("switchable", sw.stages, list(range(1, draft.last + 1)))
    last_norms = {u.norms[-1] for u in structure.units if u.norms}
    for name, info in structure.slots.items():
        if info.stage in chosen:
            draft.slots[name] = _switch_spec(sw, name, sw.last_gamma and name in last_norms)
    unknown = sorted(set(sw.choices) - {s for s, spec in draft.slots.items() if spec.kind == "sn"})
    if unknown:
        raise NormsearchError(
            f"{draft.source}: norm.switchable.choices: {unknown[0]!r} is not a SwitchNorm slot of the listed "
            "stages"
        )
    draft.switchable = SwitchSchedule(
        hard_at=sw.hard_at if sw.mode == "soft" else None, batch_average=sw.batch_average
    )


def dson_rule(draft: Draft) -> None:
    """DSON (Seo et al. 2020): per-source-domain BN+IN mixtures in the listed stages' BN slots."""
    dson_slots(draft.structure, draft.norm.dson, draft.slots, draft.source)


def overrides_rule(draft: Draft) -> None:
    """`norm.overrides`: a spec per slot (after-addition slots included), over every rule before it."""
    for slot, text in draft.norm.overrides.items():
        if slot not in draft.slots and slot not in draft.post_names:
            example = ", ".join(list(draft.channels)[:2] + list(draft.post_names)[:1])
            raise NormsearchError(
                f"{draft.source}: norm.overrides: no slot {slot!r} in this network; slots look like {example}"
            )
        spec = NormSpec.parse(text)
        if spec.kind == "gn":
            spec = draft.group_norm(slot, int(spec.get("groups", 32)), f"norm.overrides.{slot}")
        draft.slots[slot] = spec


def default_fits_rule(draft: Draft) -> None:
    """A GN default is not clamped to C (that would change what it builds); one that does not fit a slot
    fails here, naming the slot, instead of when the network is built."""
    default = NormSpec.parse(draft.norm.default)
    if default.kind != "gn":
        return
    groups = int(default.get("groups", 32))
    for slot, spec in draft.slots.items():
        if spec == default and (groups < 1 or draft.slot_channels(slot) % groups):
            raise NormsearchError(
                f"{draft.source}: norm.default: {default}: groups={groups} does not divide the "
                f"{draft.slot_channels(slot)} channels of slot {slot}"
            )


def _insert_modules(draft: Draft, name: str, rule: CrossNormRule | SelfNormRule, spec: NormSpec) -> None:
    """One `name` module per unit of the rule's stages at its position (CNSN §3.4)."""
    structure = draft.structure
    chosen = draft.stages(name, rule.stages, list(range(1, draft.last + 1)))
    units = [u for u in structure.units if u.stage in chosen]
    if not any(rule.position in u.positions for u in units):
        have = sorted({p for u in structure.units for p in u.positions})
        raise NormsearchError(
            f"{draft.source}: norm.{name}.position: {rule.position!r} does not exist in this "
            f"{structure.family} network; positions here: {', '.join(have)}"
        )
    for unit in units:
        if rule.position in unit.positions:
            draft.inserts[unit.child(name)] = Insert(spec, rule.position, unit.positions[rule.position])


def crossnorm_rule(draft: Draft) -> None:
    """CrossNorm (CNSN §3.1-3.2): inserted modules plus the trainer's activation policy."""
    rule = draft.norm.crossnorm
    if rule is None:
        return
    spec = NormSpec.of(
        "crossnorm",
        mode=rule.mode,
        crop=rule.crop,
        threshold=rule.threshold,
        beta=rule.beta,
        pairing=rule.pairing,
        boxes=rule.boxes,
    )
    draft.crossnorm = CrossNormSchedule(p=rule.p, active_num=rule.active_num)
    _insert_modules(draft, "crossnorm", rule, spec)


def selfnorm_rule(draft: Draft) -> None:
    """SelfNorm (CNSN §3.3): inserted modules (after CrossNorm where both sit at one position)."""
    rule = draft.norm.selfnorm
    if rule is not None:
        _insert_modules(draft, "selfnorm", rule, NormSpec.of("selfnorm", form=rule.form))


def augment_rule(draft: Draft) -> None:
    """MixStyle and DSU (feature-statistics augmentation) after the listed stages or units."""
    draft.inserts.update(augment_inserts(draft.structure, draft.norm.mixstyle, draft.norm.dsu, draft.source))


# Applied in this order; a later rule replaces what an earlier one put in a slot (see the module docstring).
RULES: list[Callable[[Draft], None]] = [
    xbn_rule,
    ibn_a_rule,
    ibn_b_rule,
    switchable_rule,
    dson_rule,
    overrides_rule,
    default_fits_rule,
    crossnorm_rule,
    selfnorm_rule,
    augment_rule,
]


def resolve_plan(
    structure: Structure, norm: NormConfig, source: str = "config", backbone: Backbone | None = None
) -> NormPlan:
    """The NormPlan of `norm`'s rules (`RULES`, in order) on a network of this structure; `backbone`
    travels with the plan so that models build from the plan alone."""
    draft = Draft(structure, norm, source)
    for rule in RULES:
        rule(draft)
    ordered = _forward_order(structure, draft.slots)
    unit_rank = {u.name: u.number for u in structure.units}
    inserts = sorted(
        draft.inserts.items(), key=lambda kv: (_unit_of(kv[0], unit_rank), kv[0].endswith("selfnorm"))
    )
    return NormPlan(
        slots=ordered,
        channels={slot: draft.slot_channels(slot) for slot in ordered},
        inserts=dict(inserts),
        input_norm=norm.input,
        crossnorm=draft.crossnorm,
        switchable=draft.switchable,
        backbone=backbone,
        extra_slots=frozenset(ordered) - frozenset(structure.slots),
        inference=draft.norm.inference,
    )


def _unit_of(name: str, rank: dict[str, int]) -> int:
    for sep in (".", "_"):
        head = name.rpartition(sep)[0]
        if head in rank:
            return rank[head]
    return 0


def _forward_order(structure: Structure, slots: dict[str, NormSpec]) -> dict[str, NormSpec]:
    """Slots in forward order, an after-addition norm right after its unit's (or stage's) norms."""
    after: dict[str, list[str]] = {}
    units = {u.child("post"): u for u in structure.units}
    for name in slots:
        if name in structure.slots:
            continue
        unit = units.get(name)
        if unit is not None:
            anchor = (unit.norms + unit.shortcut)[-1]
        else:  # a stage's post: after the stage's last norm
            stage = next(s for s, (n, _) in structure.stage_posts.items() if n == name)
            anchor = [n for n, i in structure.slots.items() if i.stage == stage and i.unit][-1]
        after.setdefault(anchor, []).append(name)
    ordered: dict[str, NormSpec] = {}
    for name in structure.slots:
        ordered[name] = slots[name]
        for post in after.get(name, []):
            ordered[post] = slots[post]
    return ordered


def _switch_spec(rule: SwitchableRule, slot: str, last_gamma: bool = False) -> NormSpec:
    params: dict[str, Any] = {"last_gamma": True} if last_gamma else {}
    if not rule.unbiased:
        params["unbiased"] = False
    if rule.mode == "soft":
        return NormSpec.of("sn", **params)
    if rule.mode == "sparse":
        return NormSpec.of("ssn", **params)
    mean, var = rule.choices.get(slot, f"{rule.mean}/{rule.var}").split("/")
    return NormSpec.of("sn", mode="hard", mean=mean, var=var, **params)
