from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from normsearch.data import make_synthetic
from normsearch.data.corruptions import CORRUPTIONS, corrupt, corrupt_domain
from normsearch.errors import NormsearchError

CLEAN = make_synthetic(domains=["plain"], n_train=8, n_val=8, n_test=48, style_bias=0.0)["plain"].split(
    "test"
)[0]


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_severity_keeps_shape_dtype_range_and_moves_further(name: str) -> None:
    clean = CLEAN.float() / 255
    distances = []
    for severity in range(1, 6):
        out8 = corrupt(CLEAN, name, severity, seed=1)
        assert out8.shape == CLEAN.shape and out8.dtype == torch.uint8
        out = corrupt(clean, name, severity, seed=1)
        assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
        distances.append(float((out - clean).abs().mean()))
    assert distances[0] > 0
    assert all(a < b for a, b in pairwise(distances)), distances


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_deterministic_from_seed(name: str) -> None:
    assert torch.equal(corrupt(CLEAN, name, 3, seed=5), corrupt(CLEAN, name, 3, seed=5))


def test_random_corruptions_depend_on_seed() -> None:
    assert not torch.equal(
        corrupt(CLEAN, "gaussian_noise", 3, seed=1), corrupt(CLEAN, "gaussian_noise", 3, seed=2)
    )


def test_derived_domain_and_errors() -> None:
    base = make_synthetic(domains=["plain"], n_train=8, n_val=4, n_test=4)["plain"]
    derived = corrupt_domain(base, "fog", 3)
    assert derived.name == "plain+fog@3" and torch.equal(derived.labels, base.labels)
    assert derived.splits.keys() == base.splits.keys()
    with pytest.raises(NormsearchError, match="unknown corruption 'rain'; allowed: gaussian_noise"):
        corrupt(CLEAN, "rain", 1)
    with pytest.raises(NormsearchError, match="severity must be 1-5, got 6"):
        corrupt(CLEAN, "fog", 6)
