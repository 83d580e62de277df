"""Placement of feature-statistics augmentation (MixStyle, DSU) and of domain-specific normalization (DSON).

- MixStyle (Zhou et al., ICLR 2021) and DSU (Li et al., ICLR 2022) are inserted modules, like CrossNorm: one
  per unit at `position` (default ``post``, after the residual addition) of each listed stage, on every
  unit (``units: all``) or on the last unit of the stage only (``units: last``, the default), which is the
  papers' "after residual stage k". Departure: on our residual blocks ``post`` sits before the block's
  final ReLU, the papers' modules after it (the stage's output). MixStyle's paper default is stages 1-3 of
  four (`MIXSTYLE_STAGES`, all but the last); DSU's release perturbs after every stage (and the stem,
  which has no insertion point here).
- DSON (Seo et al., ECCV 2020) fills norm slots: every slot of the listed stages (and the stem, `stem`)
  that holds a BatchNorm after the other rules becomes ``dson:domains=D``; `domains` must equal the number
  of source domains the recipe trains on (the trainer checks it).

The rules' models live here, next to their placement, and `arch.config.NormConfig` holds them as
`mixstyle`, `dsu` and `dson`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from normsearch.arch.plan import Insert
from normsearch.arch.structure import Structure
from normsearch.errors import NormsearchError
from normsearch.norms.mixstyle import MIXES
from normsearch.norms.spec import NormSpec


def _mix_mode(value: str) -> str:
    if value not in MIXES:
        raise ValueError(f"must be one of {'|'.join(MIXES)}, got {value!r}")
    return value


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MixStyleRule(_Rule):
    """Where MixStyle goes and how it mixes (defaults: the release's p and α, the paper's stages 1-3)."""

    p: float = Field(default=0.5, ge=0.0, le=1.0)
    alpha: float = Field(default=0.1, gt=0.0)
    mix: Annotated[str, AfterValidator(_mix_mode)] = "random"
    position: Literal["residual", "identity", "pre", "post"] = "post"
    units: Literal["last", "all"] = "last"
    stages: list[int] | None = None  # None: every stage but the last


class DSURule(_Rule):
    """Where DSU goes (defaults: the release's p = 0.5, after every stage)."""

    p: float = Field(default=0.5, ge=0.0, le=1.0)
    position: Literal["residual", "identity", "pre", "post"] = "post"
    units: Literal["last", "all"] = "last"
    stages: list[int] | None = None  # None: every stage


class DSONRule(_Rule):
    """Which BatchNorm slots become domain-specific (default: all of them, stem included)."""

    domains: int = Field(default=2, ge=1)
    stages: list[int] | None = None
    stem: bool = True


def _stages(
    structure: Structure, key: str, given: list[int] | None, default: list[int], source: str
) -> list[int]:
    if not structure.traced or not structure.units:
        why = structure.note or "it has no units (residual blocks, dense layers or stages) to place it in"
        raise NormsearchError(f"{source}: norm.{key}: cannot place this rule: {why}")
    last = structure.num_stages
    chosen = default if given is None else given
    for stage in chosen:
        if not 1 <= stage <= last:
            raise NormsearchError(
                f"{source}: norm.{key}.stages: stage {stage} out of range; this backbone has stages 1-{last}"
            )
    return sorted(set(chosen))


def augment_inserts(
    structure: Structure, mixstyle: MixStyleRule | None, dsu: DSURule | None, source: str = "config"
) -> dict[str, Insert]:
    """The MixStyle and DSU modules the rules insert, by module name (``layer1.1.mixstyle``)."""
    last = structure.num_stages
    inserts: dict[str, Insert] = {}
    for name, rule, default in (
        ("mixstyle", mixstyle, list(range(1, max(last, 2)))),
        ("dsu", dsu, list(range(1, last + 1))),
    ):
        if rule is None:
            continue
        if isinstance(rule, MixStyleRule):
            spec = NormSpec.of("mixstyle", p=rule.p, alpha=rule.alpha, mix=rule.mix)
        else:
            spec = NormSpec.of("dsu", p=rule.p)
        chosen = _stages(structure, name, rule.stages, default, source)
        units = []
        for stage in chosen:
            stage_units = [u for u in structure.stage_units(stage) if rule.position in u.positions]
            units += stage_units[-1:] if rule.units == "last" else stage_units
        if not units:
            have = sorted({p for u in structure.units for p in u.positions})
            raise NormsearchError(
                f"{source}: norm.{name}.position: {rule.position!r} does not exist in the listed stages of "
                f"this {structure.family} network; positions here: {', '.join(have)}"
            )
        for unit in units:
            inserts[unit.child(name)] = Insert(spec, rule.position, unit.positions[rule.position])
    return inserts


def dson_slots(
    structure: Structure, rule: DSONRule | None, slots: dict[str, NormSpec], source: str = "config"
) -> None:
    """Turn the BatchNorm slots the DSON rule covers into ``dson:domains=D`` (in place)."""
    if rule is None:
        return
    chosen = _stages(structure, "dson", rule.stages, list(range(1, structure.num_stages + 1)), source)
    covered = {n for n, info in structure.slots.items() if info.stage in chosen}
    if rule.stem:
        covered |= set(structure.stem)
    spec = NormSpec.of("dson", domains=rule.domains)
    for name in covered:
        if name in slots and slots[name].kind == "bn":
            slots[name] = spec
