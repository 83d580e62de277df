"""The recipe's data section: domain references, derived domains, splits by role, group means, batches."""

from __future__ import annotations

import pytest
import torch

from normsearch.data.pipeline import AugmentConfig, Standardizer, make_augment, train_batches
from normsearch.data.spec import DataConfig, group_means, load_data, parse_domain
from normsearch.errors import NormsearchError

SMALL = {"n_train": 60, "n_val": 20, "n_test": 20}


def test_domain_references_normalise_to_one_name() -> None:
    assert parse_domain("texture") == "texture"
    assert parse_domain({"base": "plain", "corruption": "fog", "severity": 3}) == "plain+fog@3"
    assert parse_domain("plain+fog@3") == "plain+fog@3"
    with pytest.raises(ValueError, match="severity must be 1-5"):
        parse_domain("plain+fog@7")
    with pytest.raises(ValueError, match="base\\+corruption@severity"):
        parse_domain("plain+fog")


def test_load_data_builds_source_select_and_derived_test_domains() -> None:
    config = DataConfig(
        select=["texture"], test=[{"base": "pastel", "corruption": "contrast", "severity": 2}], **SMALL
    )
    data = load_data(config)
    assert list(data.domains) == ["plain", "texture", "pastel", "pastel+contrast@2"]
    assert {k: len(v) for k, v in data["plain"].splits.items()} == {"train": 60, "val": 20, "test": 20}
    assert set(data["texture"].splits) == {"val", "test"}
    derived, base = data["pastel+contrast@2"], data["pastel"]
    assert torch.equal(derived.labels, base.labels) and not torch.equal(derived.images, base.images)
    again = load_data(config)
    assert torch.equal(again["pastel+contrast@2"].images, derived.images)  # deterministic from the seed


def test_source_cannot_be_a_target() -> None:
    with pytest.raises(ValueError, match="source domain 'plain' cannot also be"):
        DataConfig(select=["plain"])


def test_group_means_use_the_documented_sets() -> None:
    accs = {"texture": 40.0, "noisy": 60.0, "pastel": 90.0, "fog": 70.0}
    groups = group_means(accs, "synthetic")
    assert groups["texture_noise"] == 50.0 and groups["photometric"] == 80.0 and groups["headline"] == 65.0
    assert group_means({"a": 10.0, "b": 30.0}, "folder") == {"headline": 20.0}


def test_standardizer_uses_source_train_statistics() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    std = Standardizer.fit(images)
    x = std(images)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_augmentation_translates_each_image_independently() -> None:
    torch.manual_seed(0)
    augment = make_augment(AugmentConfig(translate=2, hflip=False), 16)
    images = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    images[:, :, 7:9, 7:9] = 255  # a centred dot: its position after augmentation shows the shift
    batches = list(train_batches(images, torch.zeros(64, dtype=torch.long), 64, torch.Generator(), augment))
    ((x, _),) = batches
    positions = {tuple((img[0] > 0).nonzero()[0].tolist()) for img in x}
    assert len(positions) > 5  # different shifts within one batch
    assert all(5 <= r <= 9 and 5 <= c <= 9 for r, c in positions)  # by at most 2 pixels
    assert make_augment(AugmentConfig(translate=0), 16) is None


def test_one_image_last_batch_is_dropped() -> None:
    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    sizes = [len(y) for _, y in train_batches(images, torch.zeros(5, dtype=torch.long), 2, torch.Generator())]
    assert sizes == [2, 2]


def test_folder_dataset_needs_a_real_root(tmp_path) -> None:
    config = DataConfig(dataset="folder", root=str(tmp_path / "nope"), source="a", select=["b"])
    with pytest.raises(NormsearchError, match="no such folder"):
        load_data(config)
