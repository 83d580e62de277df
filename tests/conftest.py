"""Shared test settings: one torch thread so results do not depend on the machine's load."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from normsearch.search.ray import quiet_ray_env

# Before anything imports ray: Ray reads these at import (loopback only, no usage stats).
quiet_ray_env()


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


# The recipe overrides that make a run small enough that a trial takes a second or two on one thread, while
# the code path stays the full one (data pipeline, Ray Tune, the study, the records). One list for the suite.
TINY_BUDGET: dict[str, object] = {
    "train.epochs": 2,
    "data.n_train": 300,
    "data.n_val": 60,
    "data.n_test": 60,
}


class Tiny:
    """The tiny budget as recipe overrides: `overrides()` for `load_recipe(..., overrides=...)`, `flags()`
    (or unpacking, `*tiny`) for the CLI's `--set`, and `but({...})` for a test that needs another value of
    one key (None drops the key), so that each deviation from the shared budget is written where it is
    used."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self.values = dict(values)

    def but(self, changes: Mapping[str, object]) -> Tiny:
        values = {**self.values, **changes}
        return Tiny({key: value for key, value in values.items() if value is not None})

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]

    def flags(self) -> list[str]:
        return [part for override in self.overrides() for part in ("--set", override)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.flags())


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """The suite's one tiny budget (TINY_BUDGET), for CLI runs and `load_recipe` alike."""
    return Tiny(TINY_BUDGET)


@pytest.fixture
def ray_local():
    """One private local Ray per test run (started on first use, restarted if a test shut it down)."""
    import ray

    from normsearch.search.ray import start_ray

    if not ray.is_initialized():
        start_ray(None, num_cpus=2)
    yield


@pytest.fixture
def make_image_folder():
    """Write a DomainBed-style folder of generated photos: root/<domain>/<class>/<i>.png. Each domain tints
    its images and each class draws a bright square at its own place, so a network can learn something."""
    import numpy as np
    from PIL import Image

    def make(root, domains, classes, per_class, size=16):
        rng = np.random.default_rng(0)
        for d, domain in enumerate(domains):
            for c, cls in enumerate(classes):
                folder = root / domain / cls
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    pixels = rng.integers(0, 80, (size, size + 3, 3), dtype=np.uint8)
                    pixels[..., d % 3] += 60
                    x0 = (c * 5) % max(size - 4, 1)
                    pixels[2 : 2 + size // 3, x0 : x0 + size // 3] = 250
                    Image.fromarray(pixels).save(folder / f"{i}.png")
        return root

    return make
