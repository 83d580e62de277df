"""Domains: named sets of labelled images held as tensors, with deterministic splits.

A `DomainSet` is one dataset's domains. All of them share one class list (a mismatch is an error naming
both class sets). Images are uint8 (N, C, H, W) tensors in memory; batches are sliced from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from normsearch.errors import NormsearchError

SPLITS = ("train", "val", "test")


@dataclass
class Domain:
    """One domain: images (uint8, N×C×H×W), integer labels, and named index splits into them."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    splits: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise NormsearchError(f"domain {self.name}: images must be a uint8 (N, C, H, W) tensor")
        if len(self.images) != len(self.labels):
            raise NormsearchError(
                f"domain {self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of one split; the whole domain when it has no splits."""
        if not self.splits:
            return self.images, self.labels
        if name not in self.splits:
            raise NormsearchError(f"domain {self.name}: no split {name!r}; it has {', '.join(self.splits)}")
        index = self.splits[name]
        return self.images[index], self.labels[index]

    def split_by_fractions(self, fractions: dict[str, float], seed: int) -> Domain:
        """Disjoint splits drawn per class (stratified) from a generator seeded by `seed`."""
        gen = torch.Generator().manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in fractions}
        for cls in self.labels.unique(sorted=True):
            idx = (self.labels == cls).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            start = 0
            for i, (name, frac) in enumerate(fractions.items()):
                stop = len(idx) if i == len(fractions) - 1 else start + round(frac * len(idx))
                parts[name].append(idx[start:stop])
                start = stop
        self.splits = {name: torch.cat(p).sort().values for name, p in parts.items()}
        return self


@dataclass
class DomainSet:
    """The domains of one dataset, sharing a class list."""

    classes: list[str]
    domains: dict[str, Domain]
    class_sets: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, classes in self.class_sets.items():
            if classes != self.classes:
                first = next(iter(self.class_sets))
                raise NormsearchError(
                    f"domains {first!r} and {name!r} have different classes: "
                    f"{self.class_sets[first]} vs {classes}"
                )

    def __getitem__(self, name: str) -> Domain:
        try:
            return self.domains[name]
        except KeyError:
            raise NormsearchError(f"no domain {name!r}; domains found: {', '.join(self.domains)}") from None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
