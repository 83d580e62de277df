"""`ArchConfig`: the architecture a user writes, searches over and exports; `resolve()` gives its NormPlan.

A backbone is one of: a preset (our ResNet family, the CNSN paper's CIFAR networks, small DenseNet and
MobileNetV2 variants), an explicit ResNet (block, depths, widths, stem), a torchvision classification
builder (`torchvision: densenet121`), a timm model (`timm: seresnet50`, the `normsearch[timm]` extra) or any
callable returning an nn.Module (`module: "pkg.mod:build"`, `kwargs`). The placement rules (ibn, xbn,
switchable, crossnorm, selfnorm, overrides) live in `arch/rules.py`, written once against the network's
`Structure` (`arch/structure.py`); see there for what each rule does on each family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from normsearch.arch.plan import NormPlan
from normsearch.arch.rules import resolve_plan
from normsearch.arch.rules_augment import DSONRule, DSURule, MixStyleRule
from normsearch.arch.sources import SOURCES, structure_of
from normsearch.arch.structure import Structure, from_topology
from normsearch.arch.topology import BlockType, Topology, resnet_topology
from normsearch.config import read_mapping, validate
from normsearch.errors import NormsearchError
from normsearch.norms.crossnorm import BOXES, CROPS, MODES, PAIRINGS
from normsearch.norms.registry import validate_spec
from normsearch.norms.running import StatsPolicy
from normsearch.norms.selfnorm import FORMS
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
    # CNSN's CIFAR networks (CrossNorm/SelfNorm Table 1): ResNeXt-29 (32×4d) is our bottleneck ResNet.
    "resnext29_32x4d": {
        "block": "bottleneck",
        "depths": [3, 3, 3],
        "widths": [64, 128, 256],
        "stem": "cifar",
        "groups": 32,
        "width_per_group": 4,
    },
    "wrn-40-2": {"module": "normsearch.models.cifar:wide_resnet", "kwargs": {"depth": 40, "widen": 2}},
    "densenet-bc-100": {
        "module": "normsearch.models.cifar:densenet_cifar",
        "kwargs": {"growth_rate": 12, "block_config": [16, 16, 16]},
    },
    "allconvnet": {"module": "normsearch.models.cifar:all_conv_net", "kwargs": {}},
    # Small variants (0.3M parameters, stride-2 stem) that train on the built-in benchmark (32 px) in a
    # few times resnet-mini's time.
    "densenet-mini": {
        "module": "normsearch.models.cifar:densenet_cifar",
        "kwargs": {"growth_rate": 16, "block_config": [6, 6, 6], "num_init_features": 32, "stem_stride": 2},
    },
    "mobilenetv2-mini": {
        "module": "normsearch.models.cifar:mobilenet_v2_cifar",
        "kwargs": {"stem_stride": 2},
    },
}
RESNET_KEYS = ("block", "depths", "widths", "stem", "groups", "width_per_group")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(_Strict):
    """A preset, an explicit ResNet (explicit fields override the preset's), or a network by source:
    `torchvision`, `timm` or `module` (with `kwargs`). `se` adds squeeze-and-excitation (reduction 16, as
    the IBN-Net SE-ResNet release) to our ResNet family."""

    preset: str | None = None
    block: BlockType | None = None
    depths: list[int] | None = None
    widths: list[int] | None = None
    stem: Literal["cifar", "imagenet"] | None = None
    groups: int | None = Field(default=None, ge=1)
    width_per_group: int | None = Field(default=None, ge=1)
    torchvision: str | None = None
    timm: str | None = None
    module: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    se: bool = False
    num_classes: int = Field(default=10, ge=1)
    in_channels: int = Field(default=3, ge=1)
    zero_init_last: bool = False
    # A torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a checkpoint file, loaded with weight
    # inheritance (normsearch.models.weights / inherit); `strict`: unused or missing tensors are an error.
    weights: str | None = Field(default=None, min_length=1)
    strict: bool = True

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Backbone:
        given = [k for k in SOURCES if getattr(self, k) is not None]
        resnet_given = [k for k in RESNET_KEYS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one source, not {' and '.join(given)}")
        if given and self.preset:
            raise ValueError(f"give preset or {given[0]}, not both")
        if self.source != "resnet":
            if resnet_given:
                raise ValueError(
                    f"{', '.join(resnet_given)} describe our ResNet, not a {self.source} backbone"
                )
            if self.se or self.zero_init_last:
                raise ValueError("se and zero_init_last apply to our ResNet family only")
            if self.kwargs and self.preset:
                raise ValueError("kwargs go with module: (a preset fixes its own)")
            return self
        if self.kwargs:
            raise ValueError("kwargs go with module: (our ResNet is described by its own keys)")
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

    @property
    def source(self) -> str:
        """``resnet`` (our ResNet family), ``torchvision``, ``timm`` or ``module``."""
        for kind in SOURCES:
            if getattr(self, kind) is not None:
                return kind
        return "module" if "module" in PRESETS.get(self.preset or "", {}) else "resnet"

    def source_spec(self) -> tuple[str, str, dict[str, Any]]:
        """(source, name, kwargs) of a backbone that is not our ResNet."""
        preset = PRESETS.get(self.preset or "", {})
        if "module" in preset:
            return "module", preset["module"], dict(preset["kwargs"])
        kind = self.source
        return kind, getattr(self, kind), dict(self.kwargs)

    def resolved(self) -> dict[str, Any]:
        """Our ResNet: the preset's fields with the explicit ones laid over them. Any other backbone: its
        source and its `block` kind (``bottleneck`` when units have three norm positions)."""
        if self.source != "resnet":
            kind, name, _ = self.source_spec()
            return {"source": kind, "name": name, "block": self.structure().block_kind()}
        merged: dict[str, Any] = {"groups": 1, "width_per_group": 64}
        merged.update(PRESETS.get(self.preset or "", {}))
        for key in RESNET_KEYS:
            if getattr(self, key) is not None:
                merged[key] = getattr(self, key)
        return merged

    def topology(self) -> Topology:
        """The analytic topology of our ResNet (only for the ResNet source)."""
        spec = self.resolved()
        return resnet_topology(
            spec["block"], spec["depths"], spec["widths"], spec["groups"], spec["width_per_group"]
        )

    def structure(self) -> Structure:
        """The network's slots, units and stages: analytic for our ResNet, otherwise read once per
        process from a meta-device build (family adapter or torch.fx trace)."""
        if self.source == "resnet":
            return from_topology(self.topology())
        kind, name, kwargs = self.source_spec()
        return structure_of(kind, name, kwargs, self.in_channels)


Stages = list[int]


Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class IBNRule(_Strict):
    variant: Literal["a", "b"] = "a"
    # IBN-a: one IN ratio, or one per listed stage (IBN-Net Table 5); None: the family's released ratio
    # (0.5; DenseNet 0.4).
    ratio: Ratio | list[Ratio] | None = None
    stages: Stages | None = None
    # IBN-a channel order: in_bn (IN first, the ResNet release) or bn_in (BN on the first ⌊(1-R)·C⌋
    # channels, the DenseNet release); None: the family's released order.
    order: Literal["in_bn", "bn_in"] | None = None
    every: int | None = Field(default=None, ge=1)  # every n-th unit of a stage; None: released (DenseNet 3)


class SwitchableRule(_Strict):
    stages: Stages | None = None
    # The released SN ResNet switches the stem too; by default the stem switches when the rule covers the
    # whole network (no `stages` given), so a rule restricted to some stages leaves the stem alone.
    stem: bool | None = None
    # The released SN ResNet zero-initialises γ of the last SN in every block (`last_gamma`).
    last_gamma: bool = True
    mode: Literal["soft", "hard", "sparse"] = "soft"  # sparse: Sparse SN (`ssn`, SparsestMax ratios)
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
    # None: as released, GN(64) (XBNBlock §5.2.1, ResNet/ResNeXt-50); MobileNetV2 GN(16), ShuffleNetV2 GN(29).
    groups: int | None = Field(default=None, ge=1)
    # None: as released (GroupNorm affine, XBNBlock-IN `InstanceNorm2d(affine=False)`).
    affine: bool | None = None
    position: Literal[1, 2, 3] = 2
    every: int = Field(default=1, ge=1)
    stem: bool | None = None  # None: as released (ResNet: the stem too; MobileNetV2/ShuffleNetV2: not)


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
    pairing: Annotated[str, _one_of(PAIRINGS)] = "derangement"  # randperm: the released pairing
    boxes: Annotated[str, _one_of(BOXES)] = "inside"  # clipped: the released crop-box sampler
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
    mixstyle: MixStyleRule | None = None  # arch/rules_augment.py
    dsu: DSURule | None = None
    dson: DSONRule | None = None
    overrides: dict[str, str] = Field(default_factory=dict)
    input: Literal["none", "instance"] = "none"
    # Test-time statistics of the BN-like layers: running | batch | adabn | mix:alpha=A (norms/running.py);
    # evaluation only, training is the same whatever the policy.
    inference: str = "running"

    @field_validator("inference")
    @classmethod
    def _inference_policy(cls, value: str) -> str:
        try:
            return str(StatsPolicy.parse(value))
        except NormsearchError as error:
            raise ValueError(str(error)) from None

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
        return cls.from_dict(_arch_mapping(path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # --- resolution -----------------------------------------------------------------------------------
    def resolve(self, source: str = "config") -> NormPlan:
        """The NormPlan of this architecture: every norm slot -> NormSpec, plus inserted modules."""
        return resolve_plan(self.structure(), self.norm, source, self.backbone)

    def structure(self) -> Structure:
        """The backbone's Structure (slots with stage, unit and position; units; stages)."""
        return self.backbone.structure()


def _arch_mapping(path: str | Path) -> dict[str, Any]:
    data = read_mapping(path)
    if "arch" in data and isinstance(data["arch"], dict):
        data = data["arch"]
    return data


def plan_of(config: ArchConfig | dict[str, Any] | str | Path, source: str = "config") -> NormPlan:
    """The NormPlan of an ArchConfig, a mapping or a YAML/JSON file (an exported file's `arch` section
    too), resolved once: a mapping or file is validated without the trial resolution `from_dict` makes,
    so every placement error still surfaces, from this one resolution."""
    if isinstance(config, str | Path):
        source, config = str(config), _arch_mapping(config)
    if not isinstance(config, ArchConfig):
        config = validate(ArchConfig, config, source)
    return config.resolve(source)


def load_arch(path: str | Path) -> ArchConfig:
    """Read and validate an ArchConfig (or an exported file with an `arch` section) from YAML/JSON."""
    return ArchConfig.load(path)
