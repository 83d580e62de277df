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
