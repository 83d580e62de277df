"""`ArchConfig`: the architecture a user writes, searches over and exports; `resolve()` gives its NormPlan.

Precedence, lowest to highest (a later rule *replaces* what an earlier one put in a slot, as timm's block
overrides do): ``default`` < ``xbn`` < ``ibn`` < ``switchable`` < ``overrides``. CrossNorm and SelfNorm do
not fill norm slots; they insert modules, CrossNorm before SelfNorm where both sit at one position.

Family rules follow the papers and their released placements:

- IBN-a (IBN-Net §3.2): `bn1` of every block in the listed stages becomes ``ibn:ratio=R``
  (IBN-Net50-a: stages 1-3; default: every stage but the last).
- IBN-b: IN(affine) on the stem norm and after the addition of the *last* block of each listed stage
  (IBN-Net50-b: stages 1-2, three IN layers; default: stages 1-2, never the last stage).
- XBN (XBNBlock §5.2.1): position P1/P2/P3 = bn1/bn2/bn3 of a bottleneck (basic blocks: P1, P2 -> bn1,
  P3 -> bn2) of every `every`-th block counted across the network (D2/D4/D8), plus the stem when
  `stem: true` as the released code does; shortcut norms stay as they were; GN groups clamp to C.
- Switchable: every norm slot (shortcut included) of the blocks in the listed stages, and the stem when the
  rule covers the whole network (`stem`), with γ of each block's last SN zero-initialised (`last_gamma`), as
  the released SN ResNet does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from normsearch.arch.plan import CrossNormSchedule, Insert, NormPlan, SwitchSchedule
from normsearch.arch.topology import BlockType, Topology, resnet_topology
from normsearch.config import read_mapping, validate
from normsearch.errors import NormsearchError
from normsearch.norms.crossnorm import CROPS, MODES
from normsearch.norms.registry import validate_spec
from normsearch.norms.selfnorm import FORMS
from normsearch.norms.spec import NormSpec
from normsearch.norms.switchable import STATS

PRESETS: dict[str, dict[str, Any]] = {
    "resnet-mini": {"block": "basic", "depths": [1, 1, 1], "widths": [16, 32, 64], "stem": "cifar"},
    "resnet-tiny": {"block": "basic", "depths": [2, 2, 2], "widths": [16, 32, 64], "stem": "cifar"},
    "resnet-small": {"block": "basic", "depths": [2, 2, 2, 2], "widths": [32, 64, 128, 256], "stem": "cifar"},
    "resnet18": {"block": "basic", "depths": [2, 2, 2, 2], "widths": [64, 128, 256, 512], "stem": "imagenet"},
    "resnet34": {"block": "basic", "depths": [3, 4, 6, 3], "widths": [64, 128, 256, 512], "stem": "imagenet"},
    "resnet50": {
        "block": "bottleneck",
        "depths": [3, 4, 6, 3],
        "widths": [64, 128, 256, 512],
        "stem": "imagenet",
    },
    "resnet101": {
        "block": "bottleneck",
        "depths": [3, 4, 23, 3],
        "widths": [64, 128, 256, 512],
        "stem": "imagenet",
    },
    "resnext50_32x4d": {
        "block": "bottleneck",
        "depths": [3, 4, 6, 3],
        "widths": [64, 128, 256, 512],
        "stem": "imagenet",
        "groups": 32,
        "width_per_group": 4,
    },
    "wide_resnet50_2": {
        "block": "bottleneck",
        "depths": [3, 4, 6, 3],
        "widths": [64, 128, 256, 512],
        "stem": "imagenet",
        "width_per_group": 128,
    },
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(_Strict):
    """A preset, or an explicit ResNet; explicit fields override the preset's."""

    preset: str | None = None
    block: BlockType | None = None
    depths: list[int] | None = None
    widths: list[int] | None = None
    stem: Literal["cifar", "imagenet"] | None = None
    groups: int | None = Field(default=None, ge=1)
    width_per_group: int | None = Field(default=None, ge=1)
    num_classes: int = Field(default=10, ge=1)
    in_channels: int = Field(default=3, ge=1)
    zero_init_last: bool = False

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Backbone:
        merged = self.resolved()
        missing = [k for k in ("block", "depths", "widths", "stem") if merged.get(k) is None]
        if missing:
            raise ValueError(
                f"give a preset or all of block, depths, widths, stem (missing: {', '.join(missing)})"
            )
        if len(merged["depths"]) != len(merged["widths"]) or not merged["depths"]:
            raise ValueError("depths and widths must be non-empty lists of the same length")
        if min(merged["depths"]) < 1 or min(merged["widths"]) < 1:
            raise ValueError("depths and widths must be positive")
        return self

    def resolved(self) -> dict[str, Any]:
        """The preset's fields with the explicit ones laid over them."""
        merged: dict[str, Any] = {"groups": 1, "width_per_group": 64}
        merged.update(PRESETS.get(self.preset or "", {}))
        for key in ("block", "depths", "widths", "stem", "groups", "width_per_group"):
            if getattr(self, key) is not None:
                merged[key] = getattr(self, key)
        return merged

    def topology(self) -> Topology:
        spec = self.resolved()
        return resnet_topology(
            spec["block"], spec["depths"], spec["widths"], spec["groups"], spec["width_per_group"]
        )


Stages = list[int]


Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class IBNRule(_Strict):
    variant: Literal["a", "b"] = "a"
    ratio: Ratio | list[Ratio] = 0.5  # IBN-a: one IN ratio, or one per listed stage (IBN-Net Table 5)
    stages: Stages | None = None


class SwitchableRule(_Strict):
    stages: Stages | None = None
    # The released SN ResNet switches the stem too; by default the stem switches when the rule covers the
    # whole network (no `stages` given), so a rule restricted to some stages leaves the stem alone.
    stem: bool | None = None
    # The released SN ResNet zero-initialises γ of the last SN in every block (`last_gamma`).
    last_gamma: bool = True
    mode: Literal["soft", "hard"] = "soft"
    mean: Literal["in", "ln", "bn"] = "bn"  # hard mode: the choice for every slot without its own
    var: Literal["in", "ln", "bn"] = "bn"
    choices: dict[str, str] = Field(default_factory=dict)  # hard mode: slot -> "mean/var", e.g. "in/bn"
    unbiased: bool = True
    hard_at: float | None = Field(default=None, gt=0.0, lt=1.0)  # soft: switch to argmax at this fraction
    batch_average: bool = False

    @field_validator("choices")
    @classmethod
    def _choice_pairs(cls, value: dict[str, str]) -> dict[str, str]:
        for slot, pair in value.items():
            parts = str(pair).split("/")
            if len(parts) != 2 or any(p not in STATS for p in parts):
                raise ValueError(
                    f"choice for {slot!r} must be 'mean/var' with each in {'|'.join(STATS)}, got {pair!r}"
                )
        return value


class XBNRule(_Strict):
    bfn: Literal["gn", "in"] = "gn"
    groups: int = Field(default=64, ge=1)  # XBNBlock §5.2.1 and the released ResNet-50: GN(64)
    # None: as released (GroupNorm affine, XBNBlock-IN `InstanceNorm2d(affine=False)`).
    affine: bool | None = None
    position: Literal[1, 2, 3] = 2
    every: int = Field(default=1, ge=1)
    stem: bool = True


def _one_of(allowed: tuple[str, ...]) -> AfterValidator:
    """A validator for string choices whose allowed values live with the layer (modes, crops, forms)."""

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {'|'.join(allowed)}, got {value!r}")
        return value

    return AfterValidator(check)


InsertPosition = Literal["residual", "identity", "pre", "post"]


class CrossNormRule(_Strict):
    p: float = Field(default=0.5, ge=0.0, le=1.0)
    active_num: int = Field(default=1, ge=1)
    mode: Annotated[str, _one_of(MODES)] = "2ins"
    crop: Annotated[str, _one_of(CROPS)] = "none"
    threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    beta: float = Field(default=1.0, gt=0.0)
    position: InsertPosition = "residual"
    stages: Stages | None = None


class SelfNormRule(_Strict):
    form: Annotated[str, _one_of(FORMS)] = "tied"
    position: InsertPosition = "residual"
    stages: Stages | None = None


def _spec_text(value: str) -> str:
    return str(validate_spec(value))


class NormConfig(_Strict):
    default: str = "bn"
    ibn: IBNRule | None = None
    switchable: SwitchableRule | None = None
    xbn: XBNRule | None = None
    crossnorm: CrossNormRule | None = None
    selfnorm: SelfNormRule | None = None
    overrides: dict[str, str] = Field(default_factory=dict)
    input: Literal["none", "instance"] = "none"

    @field_validator("default")
    @classmethod
    def _default_spec(cls, value: str) -> str:
        try:
            return _spec_text(value)
        except NormsearchError as error:
            raise ValueError(str(error)) from None

    @field_validator("overrides")
    @classmethod
    def _override_specs(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for slot, spec in value.items():
            try:
                out[slot] = _spec_text(spec)
            except NormsearchError as error:
                raise ValueError(f"{slot}: {error}") from None
        return out


class ArchConfig(_Strict):
    """What a user writes and exports: a backbone and where each normalizer goes."""

    backbone: Backbone = Field(default_factory=lambda: Backbone(preset="resnet-tiny"))
    norm: NormConfig = Field(default_factory=NormConfig)

    # --- I/O ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ArchConfig:
        """Validate a mapping; errors are one line naming `source` and the key path."""
        config = validate(cls, data, source)
        config.resolve(source)  # placement errors (stages, slots, groups) surface at load time
        return config

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        """Read an ArchConfig from YAML/JSON. An exported file's `arch` section is accepted as well."""
        data = read_mapping(path)
        if "arch" in data and isinstance(data["arch"], dict):
            data = data["arch"]
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # --- resolution -----------------------------------------------------------------------------------
    def resolve(self, source: str = "config") -> NormPlan:
        """The NormPlan of this architecture: every norm slot -> NormSpec, plus inserted modules."""
        topo = self.backbone.topology()
        channels = topo.norm_slots()
        slots = {slot: NormSpec.parse(self.norm.default) for slot in channels}
        norm = self.norm

        def stages(key: str, given: Stages | None, default: Stages) -> Stages:
            chosen = default if given is None else given
            for stage in chosen:
                if not 1 <= stage <= topo.num_stages:
                    raise NormsearchError(
                        f"{source}: norm.{key}.stages: stage {stage} out of range; this backbone has stages "
                        f"1-{topo.num_stages}"
                    )
            return sorted(set(chosen))

        def slot_channels(slot: str) -> int:
            # A norm after the addition (".post") has its block's output channels.
            return channels.get(slot) or topo.by_name[slot.removesuffix(".post")].out_channels

        def group_norm(slot: str, groups: int, key: str) -> NormSpec:
            c = slot_channels(slot)
            g = min(groups, c)  # clamp to C as the released XBN code does
            if c % g:
                raise NormsearchError(
                    f"{source}: {key}: groups={g} does not divide the {c} channels of slot {slot}"
                )
            return NormSpec.of("gn", groups=g)

        last = topo.num_stages
        if norm.xbn is not None:
            xbn = norm.xbn
            rel = (
                {1: "bn1", 2: "bn2", 3: "bn3"}
                if topo.block == "bottleneck"
                else {1: "bn1", 2: "bn1", 3: "bn2"}
            )
            targets = [f"{b.name}.{rel[xbn.position]}" for b in topo.blocks if b.number % xbn.every == 0]
            if xbn.stem:
                targets.insert(0, "bn1")
            for slot in targets:
                if xbn.bfn == "gn":
                    spec = group_norm(slot, xbn.groups, "norm.xbn.groups")
                    slots[slot] = (
                        spec
                        if xbn.affine in (None, True)
                        else NormSpec.of("gn", groups=spec.get("groups"), affine=False)
                    )
                else:
                    slots[slot] = NormSpec.of("in", affine=bool(xbn.affine))
        if norm.ibn is not None:
            ibn = norm.ibn
            if ibn.variant == "a":
                chosen = stages("ibn", ibn.stages, list(range(1, last)))
                ratios = ibn.ratio if isinstance(ibn.ratio, list) else [ibn.ratio] * len(chosen)
                if len(ratios) != len(chosen):
                    raise NormsearchError(
                        f"{source}: norm.ibn.ratio: {len(ratios)} ratios for {len(chosen)} stages "
                        f"{chosen}; give one ratio per stage or a single number"
                    )
                for stage, ratio in zip(chosen, ratios, strict=True):
                    for block in topo.stage_blocks(stage):
                        slots[f"{block.name}.bn1"] = NormSpec.of("ibn", ratio=ratio)
            else:
                slots["bn1"] = NormSpec("in")
                for stage in stages("ibn", ibn.stages, list(range(1, min(2, last - 1) + 1))):
                    block = topo.stage_blocks(stage)[-1]
                    slots[f"{block.name}.post"] = NormSpec("in")
        switch_schedule = None
        if norm.switchable is not None:
            sw = norm.switchable
            if sw.stem if sw.stem is not None else sw.stages is None:
                slots["bn1"] = self._switch_spec(sw, "bn1")
            for stage in stages("switchable", sw.stages, list(range(1, last + 1))):
                for block in topo.stage_blocks(stage):
                    last_norm = "bn3" if "bn3" in block.norms else "bn2"
                    for rel in block.norms:
                        slot = f"{block.name}.{rel}"
                        slots[slot] = self._switch_spec(sw, slot, sw.last_gamma and rel == last_norm)
            unknown = sorted(set(sw.choices) - {s for s, spec in slots.items() if spec.kind == "sn"})
            if unknown:
                raise NormsearchError(
                    f"{source}: norm.switchable.choices: {unknown[0]!r} is not a SwitchNorm slot "
                    "of the listed stages"
                )
            switch_schedule = SwitchSchedule(
                hard_at=sw.hard_at if sw.mode == "soft" else None, batch_average=sw.batch_average
            )
        for slot, text in norm.overrides.items():
            post_ok = slot.endswith(".post") and slot.removesuffix(".post") in topo.by_name
            if slot not in slots and not post_ok:
                raise NormsearchError(
                    f"{source}: norm.overrides: no slot {slot!r} in this network; slots look like "
                    f"bn1, {topo.blocks[0].name}.bn1, {topo.blocks[0].name}.post"
                )
            spec = NormSpec.parse(text)
            if spec.kind == "gn":
                spec = group_norm(slot, int(spec.get("groups", 32)), f"norm.overrides.{slot}")
            slots[slot] = spec
        default = NormSpec.parse(norm.default)
        groups = int(default.get("groups", 32)) if default.kind == "gn" else 0
        for slot, spec in slots.items():
            # The default is not clamped to C (that would change what it builds); a GN default that does
            # not fit a slot fails here, naming the slot, instead of when the network is built.
            if spec == default and default.kind == "gn" and (groups < 1 or slot_channels(slot) % groups):
                raise NormsearchError(
                    f"{source}: norm.default: {default}: groups={groups} does not divide the "
                    f"{slot_channels(slot)} channels of slot {slot}"
                )
        # Forward order: a post slot sits right after its block's other norms.
        ordered = dict(sorted(slots.items(), key=lambda kv: _slot_order(kv[0], topo)))

        inserts: dict[str, Insert] = {}
        cn_schedule = None
        for name, rule in (("crossnorm", norm.crossnorm), ("selfnorm", norm.selfnorm)):
            if rule is None:
                continue
            if name == "crossnorm":
                spec = NormSpec.of(
                    "crossnorm", mode=rule.mode, crop=rule.crop, threshold=rule.threshold, beta=rule.beta
                )
                cn_schedule = CrossNormSchedule(p=rule.p, active_num=rule.active_num)
            else:
                spec = NormSpec.of("selfnorm", form=rule.form)
            for stage in stages(name, rule.stages, list(range(1, last + 1))):
                for block in topo.stage_blocks(stage):
                    c = block.in_channels if rule.position == "pre" else block.out_channels
                    inserts[f"{block.name}.{name}"] = Insert(spec, rule.position, c)
        return NormPlan(
            slots=ordered,
            channels={slot: slot_channels(slot) for slot in ordered},
            inserts=dict(sorted(inserts.items(), key=lambda kv: _slot_order(kv[0], topo))),
            input_norm=norm.input,
            crossnorm=cn_schedule,
            switchable=switch_schedule,
        )

    @staticmethod
    def _switch_spec(rule: SwitchableRule, slot: str, last_gamma: bool = False) -> NormSpec:
        params: dict[str, Any] = {"last_gamma": True} if last_gamma else {}
        if not rule.unbiased:
            params["unbiased"] = False
        if rule.mode == "soft":
            return NormSpec.of("sn", **params)
        mean, var = rule.choices.get(slot, f"{rule.mean}/{rule.var}").split("/")
        return NormSpec.of("sn", mode="hard", mean=mean, var=var, **params)


_SUFFIX_ORDER = {"bn1": 0, "bn2": 1, "bn3": 2, "downsample.1": 3, "post": 4, "crossnorm": 5, "selfnorm": 6}


def _slot_order(slot: str, topo: Topology) -> tuple[int, int]:
    if slot == "bn1":
        return (-1, 0)
    stage_block, _, rel = slot.partition(".")[2].partition(".")
    block = f"{slot.split('.')[0]}.{stage_block}"
    return (topo.by_name[block].number, _SUFFIX_ORDER.get(rel, 9))


def load_arch(path: str | Path) -> ArchConfig:
    """Read and validate an ArchConfig (or an exported file with an `arch` section) from YAML/JSON."""
    return ArchConfig.load(path)
