"""The input pipeline: batches for training and evaluation, sliced from uint8 tensors (memory-mapped for
folder data), augmented and standardised.

Inputs are standardised per channel with the source training split's mean and std (benchmark-design §2), or
with ImageNet's for a pretrained backbone, and the same constants apply to every domain. Training batches are
augmented per image with torchvision transforms v2 on uint8 tensors: the built-in benchmark's translation
(random crop with edge padding) and flip, or DomainBed's augmentation (`preset: domainbed`:
RandomResizedCrop scale 0.7-1, horizontal flip, ColorJitter 0.3, RandomGrayscale 0.1, as in DomainBed's
`datasets.py`); v2 applied to a whole batch would draw one crop for all of its images.

With several source domains each batch is balanced: an equal share of the batch from every source (DomainBed
draws one minibatch per training domain), each domain's order reshuffled whenever it runs out; an epoch is
as many steps as the sources' pooled images fill. One source gives exactly the single-domain batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AugmentConfig(BaseModel):
    """Training augmentation: translation by up to `translate` pixels and horizontal flips, or DomainBed's
    augmentation (`preset: domainbed`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["none", "domainbed"] = "none"
    translate: int = Field(default=2, ge=0)
    hflip: bool = False


@dataclass(frozen=True)
class Standardizer:
    """Per-channel (x - mean) / std on uint8 images scaled to [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, images: torch.Tensor) -> Standardizer:
        """Mean and std per channel of uint8 (N, C, H, W) images."""
        x = images.float().div_(255).transpose(0, 1).flatten(1)
        return cls(x.mean(1), x.std(1).clamp_min(1e-3))

    @classmethod
    def imagenet(cls) -> Standardizer:
        """ImageNet's mean and std, which an ImageNet-pretrained backbone expects."""
        return cls(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def make_augment(config: AugmentConfig, size: int):
    """A per-image transforms-v2 pipeline on uint8 images, or None when nothing is enabled."""
    from torchvision.transforms import v2

    if config.preset == "domainbed":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
                v2.RandomGrayscale(0.1),
            ]
        )
    steps = []
    if config.translate:
        steps.append(v2.RandomCrop(size, padding=config.translate, padding_mode="edge"))
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps) if steps else None


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (uint8 images, labels) batches, augmented per image; a last batch of one image
    is dropped (BatchNorm cannot train on one)."""
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < 2:
            break
        x = images[index]
        if augment is not None:
            x = torch.stack([augment(image) for image in x])
        yield x, labels[index]


def domain_labels(batch_size: int, domains: int) -> torch.Tensor:
    """The source domain of each image of a `balanced_batches` batch: domain k's share in one block, in
    domain order (DSON and cross-domain MixStyle route by it)."""
    shares = [batch_size // domains + (k < batch_size % domains) for k in range(domains)]
    return torch.repeat_interleave(torch.arange(domains), torch.tensor(shares))


def balanced_batches(
    domains: list[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    generator: torch.Generator,
    augment=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of batches drawn equally from every source domain (see the module docstring); with one
    domain, exactly `train_batches`."""
    if len(domains) == 1:
        yield from train_batches(*domains[0], batch_size, generator, augment)
        return
    total = sum(len(labels) for _, labels in domains)
    shares = [batch_size // len(domains) + (k < batch_size % len(domains)) for k in range(len(domains))]
    orders = [torch.randperm(len(labels), generator=generator) for _, labels in domains]
    cursors = [0] * len(domains)
    for _ in range(math.ceil(total / batch_size)):
        xs, ys = [], []
        for k, ((images, labels), share) in enumerate(zip(domains, shares, strict=True)):
            taken = []
            while share > 0:
                if cursors[k] >= len(orders[k]):
                    orders[k] = torch.randperm(len(labels), generator=generator)
                    cursors[k] = 0
                chunk = orders[k][cursors[k] : cursors[k] + share]
                cursors[k] += len(chunk)
                share -= len(chunk)
                taken.append(chunk)
            index = torch.cat(taken)
            xs.append(images[index])
            ys.append(labels[index])
        x = torch.cat(xs)
        if augment is not None:
            x = torch.stack([augment(image) for image in x])
        yield x, torch.cat(ys)
