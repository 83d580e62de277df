"""The input pipeline: DomainBed's augmentation on uint8 tensors, balanced batches over several sources."""

from __future__ import annotations

import torch

from normsearch.data.pipeline import (
    AugmentConfig,
    Standardizer,
    balanced_batches,
    make_augment,
    train_batches,
)


def test_domainbed_augmentation_keeps_shape_and_dtype_and_changes_images() -> None:
    augment = make_augment(AugmentConfig(preset="domainbed"), 32)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    out = [augment(image) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.uint8 for o in out)
    assert len({o.numpy().tobytes() for o in out}) == 8  # a fresh crop, flip and jitter per draw
    names = [type(t).__name__ for t in augment.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale"]
    assert augment.transforms[0].scale == (0.7, 1.0) and augment.transforms[3].p == 0.1


def test_balanced_batches_draw_equal_shares_and_one_source_is_the_plain_order() -> None:
    a = (torch.zeros(30, 3, 2, 2, dtype=torch.uint8), torch.zeros(30, dtype=torch.long))
    b = (torch.ones(6, 3, 2, 2, dtype=torch.uint8), torch.ones(6, dtype=torch.long))
    batches = list(balanced_batches([a, b], 8, torch.Generator().manual_seed(0)))
    assert len(batches) == 5  # ceil(36 / 8)
    for _, y in batches:
        assert (y == 0).sum() == 4 and (y == 1).sum() == 4  # half from each source
    plain = list(train_batches(*a, 8, torch.Generator().manual_seed(3)))
    single = list(balanced_batches([a], 8, torch.Generator().manual_seed(3)))
    assert all(
        torch.equal(p[0], s[0]) and torch.equal(p[1], s[1]) for p, s in zip(plain, single, strict=True)
    )


def test_imagenet_standardisation() -> None:
    std = Standardizer.imagenet()
    x = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(std(x).flatten(), expected)
