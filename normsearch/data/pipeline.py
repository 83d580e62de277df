"""The input pipeline: batches for training and evaluation, sliced from uint8 tensors (memory-mapped for
folder data), augmented and standardised.

Inputs are standardised per channel with the source training split's mean and std (benchmark-design §2), or
with ImageNet's for a pretrained backbone, and the same constants apply to every domain. Training batches are
augmented per image with torchvision transforms v2 on uint8 tensors: the built-in benchmark's translation
(random crop with edge padding) and flip, or DomainBed's augmentation (`preset: domainbed`:
RandomResizedCrop scale 0.7-1, horizontal flip, ColorJitter 0.3, RandomGrayscale 0.1, as in DomainBed's
`datasets.py`); v2 applied to a whole batch would draw one crop for all of its images. The same
augmentation batched (`augment_batched`, `AugmentConfig.engine`) draws every image's parameters from the
trial's generator and applies them to the whole batch in a few tensor ops, for a GPU.

With several source domains each batch is balanced: an equal share of the batch from every source (DomainBed
draws one minibatch per training domain), each domain's order reshuffled whenever it runs out; an epoch is
as many steps as the sources' pooled images fill. One source gives exactly the single-domain batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from normsearch.data.augment_batched import BatchedAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AugmentConfig(BaseModel):
    """Training augmentation: translation by up to `translate` pixels and horizontal flips, or DomainBed's
    augmentation (`preset: domainbed`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["none", "domainbed"] = "none"
    translate: int = Field(default=2, ge=0)
    hflip: bool = False
    # per_image: transforms v2 image by image; batched: `augment_batched`, the whole batch in a few ops;
    # auto: batched on a CUDA device, per_image on the CPU (where `normsearch bench data` measures it faster).
    engine: Literal["auto", "per_image", "batched"] = "auto"


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
        # A split left on the host (over the device cache budget, data.stream) is standardised on the
        # constants' device: the uint8 batch crosses, not four times its bytes in float.
        x = images.to(self.mean.device, non_blocking=True).float().div_(255)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def make_augment(config: AugmentConfig, size: int, device: torch.device | str = "cpu"):
    """The training augmentation on uint8 images, or None when nothing is enabled: a per-image
    transforms-v2 pipeline, or a `BatchedAugment` (``engine``; auto picks batched on CUDA)."""
    # deferred: reading a run imports this module but never torchvision (test_show_rows.py)
    from torchvision.transforms import v2

    engine = config.engine
    if engine == "auto":
        engine = "batched" if torch.device(device).type == "cuda" else "per_image"
    if engine == "batched" and (config.preset == "domainbed" or config.translate or config.hflip):
        return BatchedAugment(config.preset, size, config.translate, config.hflip)
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


def index_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator
) -> Iterator[list[torch.Tensor]]:
    """One epoch of batches as each domain's indices (see the module docstring): one domain gives
    shuffled batches, a last batch of one image dropped (BatchNorm cannot train on one); several give
    balanced batches. Every random draw is from `generator`."""
    if len(lengths) == 1:
        order = torch.randperm(lengths[0], generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                break
            yield [index]
        return
    shares = [batch_size // len(lengths) + (k < batch_size % len(lengths)) for k in range(len(lengths))]
    orders = [torch.randperm(n, generator=generator) for n in lengths]
    cursors = [0] * len(lengths)
    for _ in range(math.ceil(sum(lengths) / batch_size)):
        batch = []
        for k, share in enumerate(shares):
            taken = []
            while share > 0:
                if cursors[k] >= len(orders[k]):
                    orders[k] = torch.randperm(lengths[k], generator=generator)
                    cursors[k] = 0
                chunk = orders[k][cursors[k] : cursors[k] + share]
                cursors[k] += len(chunk)
                share -= len(chunk)
                taken.append(chunk)
            batch.append(torch.cat(taken))
        yield batch


def sliced_batches(
    domains: list[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    generator: torch.Generator,
    augment=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any]]:
    """One epoch of (uint8 images, labels, augmentation parameters or None), sliced wherever the domains'
    tensors live. A batched augmentation's parameters are drawn right after the batch's indices, from the
    same generator, so the draws do not depend on when the batch is augmented (`data.stream`)."""
    for indices in index_batches([len(y) for _, y in domains], batch_size, generator):
        parts = [(images[i], labels[i]) for (images, labels), i in zip(domains, indices, strict=True)]
        x = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        params = None
        if getattr(augment, "batched", False):
            params = augment.sample(len(y), x.shape[-2], x.shape[-1], generator)
        yield x, y, params


def augmented(x: torch.Tensor, params: Any, augment=None) -> torch.Tensor:
    """`x` augmented: a batched augmentation with its drawn parameters, else per image."""
    if augment is None:
        return x
    if params is not None:
        return augment(x, params.to(x.device))
    return torch.stack([augment(image) for image in x])


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (uint8 images, labels) batches of one domain, augmented."""
    return balanced_batches([(images, labels)], batch_size, generator, augment)


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
    """One epoch of batches drawn equally from every source domain (see the module docstring), augmented
    where the images live; with one domain, shuffled batches of it."""
    for x, y, params in sliced_batches(domains, batch_size, generator, augment):
        yield augmented(x, params, augment), y
