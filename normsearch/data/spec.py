"""The `data` section of a recipe: which dataset, which source, which domains select and which report.

A domain reference is a name (``texture``, ``art_painting``) or a derived corruption domain, written
``plain+fog@3`` or as a mapping ``{base: plain, corruption: fog, severity: 3}``. Selection follows DomainBed:
the `select` domains choose the model (their *val* split is the search's target objective) and the `test`
domains are evaluated only after training, on their *test* split; a domain in both is an error unless the
recipe says ``selection: oracle``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from normsearch.data.corruptions import CORRUPTIONS, corrupt_domain
from normsearch.data.domains import Domain, DomainSet
from normsearch.data.folder import load_folder
from normsearch.data.protocol import Unit, describe_rule, expand_units
from normsearch.data.subset import cap_domain
from normsearch.data.synthetic import STYLES, make_synthetic
from normsearch.errors import NormsearchError

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit unsigned
MAX_SYNTHETIC = 1_000_000  # images per split of a synthetic domain
# Decoded pixels (width × height) an image file may hold, read from its header before decoding: a 30000×30000
# PNG of a few kilobytes would otherwise take 2.7 GB to decode. 50 megapixels is a large photograph.
MAX_PIXELS = 50_000_000
MAX_PER_DOMAIN = 2**31 - 1

# Keys that only one kind of dataset reads: the resolved recipe of the other kind leaves them out (they
# are still accepted when read, so a recipe.yaml written before they were left out still loads).
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "synthetic": ("n_train", "n_val", "n_test", "style_bias", "glyph_scale"),
    "folder": ("root", "val_fraction", "test_fraction", "skip_unreadable", "max_pixels"),
}

_DERIVED = re.compile(r"^(?P<base>[^+@]+)\+(?P<corruption>[a-z_]+)@(?P<severity>\d)$")

# Target groups of the built-in benchmark (benchmark-design §3, §8): the headline mean, and sub-means that
# tell which kind of invariance a configuration bought. Photometric shifts are largely solved by input
# standardisation; texture/noise shifts are what IN inside the network buys.
SYNTHETIC_TARGETS = (
    "texture",
    "pastel",
    "noisy",
    "fog",
    "plain+contrast@4",
    "plain+brightness@4",
    "plain+defocus_blur@2",
)
GROUPS: dict[str, tuple[str, ...]] = {
    "headline": SYNTHETIC_TARGETS,
    "photometric": ("pastel", "fog", "plain+contrast@4", "plain+brightness@4"),
    "texture_noise": ("texture", "noisy"),
}


def parse_domain(ref: str | dict[str, Any]) -> str:
    """Normalise a domain reference to its canonical name (``base+corruption@severity`` for derived ones)."""
    if isinstance(ref, dict):
        unknown = set(ref) - {"base", "corruption", "severity"}
        if unknown or "base" not in ref:
            raise ValueError(f"a derived domain is {{base, corruption, severity}}; got keys {sorted(ref)}")
        if "corruption" not in ref:
            return str(ref["base"])
        ref = f"{ref['base']}+{ref['corruption']}@{ref.get('severity', 3)}"
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"a domain is a name or {{base, corruption, severity}}, got {ref!r}")
    match = _DERIVED.match(ref)
    if "+" in ref or "@" in ref:
        if not match:
            raise ValueError(f"domain {ref!r}: write a derived domain as base+corruption@severity")
        if match["corruption"] not in CORRUPTIONS:
            raise ValueError(
                f"domain {ref!r}: unknown corruption {match['corruption']!r}; "
                f"allowed: {', '.join(CORRUPTIONS)}"
            )
        if not 1 <= int(match["severity"]) <= 5:
            raise ValueError(f"domain {ref!r}: severity must be 1-5")
    return ref


def base_of(name: str) -> str:
    """The stored domain a (possibly derived) domain name is computed from."""
    match = _DERIVED.match(name)
    return match["base"] if match else name


class DataConfig(BaseModel):
    """Where the domains come from and what each is used for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["synthetic", "folder"] = "synthetic"
    root: str | None = None
    source: str | list[str] = "plain"  # one domain or several (batches balanced per domain)
    select: list[str] = Field(default_factory=lambda: ["texture", "pastel", "plain+contrast@4"])
    test: list[str] = Field(
        default_factory=lambda: ["noisy", "fog", "plain+brightness@4", "plain+defocus_blur@2"]
    )
    selection: Literal["held_out", "training_domain", "leave_one_domain_out", "oracle"] = "held_out"
    rotate: bool = False  # the `source` domains take turns as the held-out test domain
    normalize: Literal["auto", "source", "imagenet"] = "auto"  # auto: ImageNet's for pretrained weights
    size: int = Field(default=32, ge=8, le=512)
    n_train: int = Field(default=4000, ge=10, le=MAX_SYNTHETIC)
    n_val: int = Field(default=500, ge=10, le=MAX_SYNTHETIC)
    n_test: int = Field(default=500, ge=10, le=MAX_SYNTHETIC)
    style_bias: float = Field(default=0.8, ge=0.0, le=1.0)
    glyph_scale: tuple[float, float] = (0.28, 0.42)  # glyph radius as a fraction of the image side
    val_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    skip_unreadable: bool = False  # skip (and name) unreadable, non-regular or oversized image files
    max_pixels: int = Field(default=MAX_PIXELS, ge=1, le=2**31 - 1)  # per image, checked before decoding
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    # At most this many images of every domain, chosen per class with `seed` before any split
    # (data/subset.py): a budget knob. None: every image.
    max_per_domain: int | None = Field(default=None, ge=1, le=MAX_PER_DOMAIN)
    # Image data a trial may copy to its device, GiB; more streams from the host (data/stream.py).
    # None: half the device's free memory, shared by the trials on it.
    device_cache_gb: float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _folder_defaults(cls, data: Any) -> Any:
        # The built-in benchmark's domain names are defaults for it only: a folder names its own domains.
        if isinstance(data, dict) and data.get("dataset") == "folder":
            data = {"select": [], "test": [], **data}
            if not data.get("root"):
                raise ValueError("dataset folder needs root: the folder holding one sub-folder per domain")
            if "source" not in data:
                raise ValueError("dataset folder needs source: the domain (sub-folder) to train on")
        if isinstance(data, dict) and data.get("selection") in ("training_domain", "leave_one_domain_out"):
            data = {"select": [], **data}  # these rules select on the sources themselves
        if isinstance(data, dict) and data.get("rotate") and data.get("dataset", "synthetic") == "synthetic":
            data = {"select": [], "test": [], **data}
        return data

    @model_serializer(mode="wrap")
    def _applicable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The resolved recipe (dry run, recipe.yaml, exports) shows only the keys this dataset reads: a
        # folder's `n_train: 4000` read as if the folder were subsampled.
        values = handler(self)
        other = "folder" if self.dataset == "synthetic" else "synthetic"
        return {key: value for key, value in values.items() if key not in ONLY_FOR[other]}

    def provenance(self) -> dict[str, Any]:
        """What reproduces the images a run trained on, for an export's provenance: the dataset, its
        root, the seed of its splits and of `max_per_domain`'s subset, and the cap."""
        return {
            "dataset": self.dataset,
            **({"root": self.root} if self.dataset == "folder" else {}),
            "seed": self.seed,
            "max_per_domain": self.max_per_domain,
        }

    @field_validator("source", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("source: at least one domain")
            names = [parse_domain(v) for v in value]
            if len(set(names)) != len(names):
                raise ValueError(f"source: a domain is listed twice in {names}")
            return names[0] if len(names) == 1 else names
        return parse_domain(value)

    @field_validator("select", "test", mode="before")
    @classmethod
    def _domains(cls, value: Any) -> list[str]:
        if isinstance(value, str | dict):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("a list of domains")
        return [parse_domain(v) for v in value]

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        self._check_domains()
        self._check_selection()
        return self

    def _check_domains(self) -> None:
        """The domain names: a folder dataset has a root, synthetic domains exist, a source is an
        uncorrupted domain that is not also selected on or tested."""
        if self.dataset == "folder" and not self.root:
            raise ValueError("dataset folder needs root: the folder holding one sub-folder per domain")
        sources = self.sources
        if self.dataset == "synthetic":
            for name in (*sources, *self.select, *self.test):
                if base_of(name) not in STYLES:
                    raise ValueError(f"unknown synthetic domain {name!r}; allowed: {', '.join(STYLES)}")
        for name in sources:
            if _DERIVED.match(name):
                raise ValueError(f"source {name!r}: a derived (corrupted) domain cannot be a source")
            if name in self.select or name in self.test:
                raise ValueError(f"the source domain {name!r} cannot also be a select or test domain")

    def _check_selection(self) -> None:
        """The model-selection rule against the domains: enough sources to rotate or leave one out,
        select domains exactly where the rule chooses on them, no domain both chosen on and reported."""
        sources = self.sources
        rule = self.selection
        if self.rotate and len(sources) < (3 if rule == "leave_one_domain_out" else 2):
            raise ValueError(
                f"rotate: needs at least {3 if rule == 'leave_one_domain_out' else 2} domains in source to "
                f"take turns as the held-out test domain (got {len(sources)})"
            )
        if rule in ("training_domain", "leave_one_domain_out") and self.select:
            raise ValueError(
                f"selection {rule} chooses on the sources themselves; select must be empty (list the "
                f"domains under test to report them)"
            )
        if rule == "leave_one_domain_out" and len(sources) < 2 and not self.rotate:
            raise ValueError("selection leave_one_domain_out needs at least two source domains")
        if rule in ("held_out", "oracle") and not self.select and not (self.rotate and rule == "oracle"):
            raise ValueError(
                "select needs at least one held-out domain to choose models with (or use selection: "
                "training_domain, which chooses on the sources' val splits)"
            )
        both = [d for d in self.test if d in self.select]
        if both and rule != "oracle":
            raise ValueError(
                f"domain {both[0]!r} is both select and test: choosing a model on the domain it is reported "
                "on is test-domain selection; remove it from one list, or set selection: oracle"
            )

    @property
    def sources(self) -> list[str]:
        """The source domains (the rotation list under `rotate`)."""
        return list(self.source) if isinstance(self.source, list) else [self.source]

    @property
    def targets(self) -> list[str]:
        """Select then test domains, each once, in order."""
        return list(dict.fromkeys([*self.select, *self.test]))

    def units(self) -> list[Unit]:
        """The training runs each candidate needs under the selection rule (data/protocol.py)."""
        return expand_units(self.sources, self.select, self.test, self.selection, self.rotate)

    def describe(self) -> str:
        """One line naming the selection rule and the domains' roles, for every table header."""
        return describe_rule(self.selection, self.sources, self.select, self.test, self.rotate)

    def domains(self) -> list[str]:
        """Every domain any unit trains on, selects with or reports on."""
        found: list[str] = []
        for unit in self.units():
            found += [*unit.sources, *unit.targets]
        return list(dict.fromkeys(found))

    def trained(self) -> list[str]:
        """The domains some unit trains on (they need a train split)."""
        return list(dict.fromkeys(s for unit in self.units() for s in unit.sources))


def load_data(config: DataConfig) -> DomainSet:
    """Build the DomainSet a recipe asks for: every domain a unit trains on with train/val/test splits,
    every other with val/test.

    Synthetic domains are generated from `config.seed`; folder domains are split per class with that seed,
    every domain the same way whatever its role (its val split selects, and only selects). Derived domains
    corrupt their base's evaluation images with a seed of their own. `max_per_domain` caps every stored
    domain before a folder's split (and the benchmark's generated splits in proportion): data/subset.py.
    """
    trained = config.trained()
    stored = list(dict.fromkeys([*trained, *(base_of(d) for d in config.domains())]))
    if config.dataset == "synthetic":
        data = make_synthetic(
            stored,
            source=trained if len(trained) > 1 else trained[0],
            n_train=config.n_train,
            n_val=config.n_val,
            n_test=config.n_test,
            size=config.size,
            style_bias=config.style_bias,
            seed=config.seed,
            glyph_scale=config.glyph_scale,
        )
        if config.max_per_domain is not None:
            capped = {n: cap_domain(d, config.max_per_domain, config.seed) for n, d in data.domains.items()}
            data = DomainSet(data.classes, capped)
    else:
        data, report = load_folder(
            Path(config.root or "."),
            stored,
            config.size,
            skip_unreadable=config.skip_unreadable,
            max_pixels=config.max_pixels,
            max_per_domain=config.max_per_domain,
            seed=config.seed,
        )
        _note_skipped(config.root or ".", report.skipped)
        fractions = {
            "train": 1 - config.val_fraction - config.test_fraction,
            "val": config.val_fraction,
            "test": config.test_fraction,
        }
        for domain in data.domains.values():
            domain.split_by_fractions(fractions, config.seed)
            used = fractions if domain.name in trained else {k: fractions[k] for k in ("val", "test")}
            _check_splits(domain, data.classes, used, config.root or ".", config.max_per_domain)
    domains: dict[str, Domain] = dict(data.domains)
    for index, name in enumerate(config.targets):  # (the index seeds each corruption: keep the order)
        match = _DERIVED.match(name)
        if match:
            domains[name] = corrupt_domain(
                _evaluation_only(data[match["base"]]),
                match["corruption"],
                int(match["severity"]),
                seed=config.seed * 1000 + index,
            )
    return DomainSet(data.classes, domains)


def _note_skipped(root: str, skipped: dict[str, list[str]]) -> None:
    """One line on stderr naming what `skip_unreadable` left out, so that a skip is never silent."""
    files = [path for paths in skipped.values() for path in paths]
    if files:
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        print(
            f"note: data root {root}: skipped {len(files)} unreadable file(s) (data.skip_unreadable): "
            f"{files[0]}{more}",
            file=sys.stderr,
        )


def _check_splits(
    domain: Domain, classes: list[str], fractions: dict[str, float], root: str, cap: int | None = None
) -> None:
    """Every split a folder domain is used through must hold images, and the source's train split every
    class: otherwise a trial would train or report on nothing (an accuracy of 0.0 without a word)."""
    counts = torch.bincount(domain.labels, minlength=len(classes))
    smallest = int(counts.argmin())
    for split, fraction in fractions.items():
        index = domain.splits[split]
        empty = len(index) == 0
        if split == "train":
            present = torch.bincount(domain.labels[index], minlength=len(classes))
            empty = bool((present == 0).any())
        if empty:
            what = "lacks a class" if split == "train" and len(index) else "is empty"
            capped = f" (data.max_per_domain {cap} kept)" if cap is not None else ""
            raise NormsearchError(
                f"data root {root}: domain {domain.name!r} has {len(domain)} images{capped}, "
                f"{int(counts[smallest])} in class {classes[smallest]!r}; its {split} split "
                f"({fraction:.0%} per class) {what}. Give each class more images (about 10 or more), "
                + ("raise data.max_per_domain, " if cap is not None else "")
                + "or change data.val_fraction / data.test_fraction"
            )


def _evaluation_only(domain: Domain) -> Domain:
    """A target built from the source keeps only the source's val and test images (CIFAR-10-C style: the
    source's evaluation images, corrupted); its train split is never a target."""
    if "train" not in domain.splits:
        return domain
    val, test = domain.splits["val"], domain.splits["test"]
    keep = torch.cat([val, test])
    splits = {"val": torch.arange(len(val)), "test": torch.arange(len(val), len(keep))}
    return Domain(domain.name, domain.images[keep], domain.labels[keep], splits)


def group_means(accuracies: dict[str, float], dataset: str) -> dict[str, float]:
    """Headline and sub-group means over the domains present in `accuracies`.

    For the synthetic benchmark the groups are `GROUPS`; for folders the headline is the mean over every
    target given. A group none of whose domains were evaluated is omitted.
    """
    if dataset != "synthetic":
        return {"headline": sum(accuracies.values()) / len(accuracies)} if accuracies else {}
    out: dict[str, float] = {}
    for group, names in GROUPS.items():
        present = [accuracies[n] for n in names if n in accuracies]
        if present:
            out[group] = sum(present) / len(present)
    return out
