"""Shared test settings: one torch thread so results do not depend on the machine's load."""

from __future__ import annotations

import pytest
import torch

from normsearch.search.ray import quiet_ray_env

# Before anything imports ray: Ray reads these at import (loopback only, no usage stats).
quiet_ray_env()


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


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
