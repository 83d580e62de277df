"""Batches for training and evaluation, sliced from in-memory tensors.

Inputs are standardised per channel with the source training split's mean and std, and the same constants
are applied to every domain (benchmark-design §2). Training batches are augmented per sample with
torchvision transforms v2 (random crop with edge padding = a random translation, horizontal flip when
allowed); v2 applied to a whole batch would draw one crop for all of its images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Training augmentation: translation by up to `translate` pixels, and horizontal flips."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def make_augment(config: AugmentConfig, size: int):
    """A per-image transforms-v2 pipeline, or None when nothing is enabled."""
    from torchvision.transforms import v2

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


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    standardize: Standardizer,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy in percent of `model` (already in eval mode) on uint8 images."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(standardize(images[start : start + batch_size]).to(device))
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return 100.0 * correct / max(len(labels), 1)
