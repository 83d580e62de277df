"""Streamed batches (host domains, buffers, one batch ahead) equal the resident ones for the same seed."""

from __future__ import annotations

import pytest
import torch

from normsearch.data.pipeline import AugmentConfig, balanced_batches, make_augment
from normsearch.data.stream import DevicePlacer, cache_budget, epoch_batches, streamed_batches


def _domains(sizes=(23, 17), side=12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8), torch.arange(n) + 100 * k)
        for k, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("engine", ["batched", "per_image"])
@pytest.mark.parametrize("preset", ["domainbed", "none"])
@pytest.mark.parametrize("sizes", [(23,), (23, 17)])
def test_streamed_batches_equal_resident_batches(engine, preset, sizes):
    domains = _domains(sizes)
    augment = make_augment(
        AugmentConfig(preset=preset, hflip=True, engine=engine), 10 if preset == "domainbed" else 12
    )

    def run(fn):
        torch.manual_seed(1)  # the per-image path draws from the global generator
        g = torch.Generator().manual_seed(7)
        return [b for _ in range(2) for b in fn(domains, 8, g, augment)]  # two epochs, one generator

    resident = run(balanced_batches)
    streamed = run(lambda d, b, g, a: streamed_batches(d, b, g, a, "cpu"))
    assert len(resident) == len(streamed) > 3
    for (xr, yr), (xs, ys) in zip(resident, streamed, strict=True):
        assert torch.equal(xr, xs) and torch.equal(yr, ys)


def test_streamed_batches_do_not_alias_the_reused_buffers():
    domains = _domains((30,))
    batches = list(streamed_batches(domains, 4, torch.Generator().manual_seed(0), None, "cpu"))
    resident = list(balanced_batches(domains, 4, torch.Generator().manual_seed(0), None))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, resident, strict=True))


def test_placer_keeps_what_exceeds_the_budget_on_the_host():
    x = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)  # 480 bytes
    assert cache_budget(torch.device("cpu"), 1.0) is None
    assert cache_budget(torch.device("cuda"), 0.5) == 2**29
    placer = DevicePlacer(torch.device("cpu"), None)
    assert placer(x) is x and placer.streamed == []
    # On a device (meta stands in: no copy is made for the ones over budget, which is what we check).
    meta = DevicePlacer(torch.device("meta"), budget=500)
    first, second = meta(x), meta(x)
    assert first.device.type == "meta" and second is x and meta.streamed == [480]


def test_epoch_batches_picks_resident_on_the_cpu():
    domains = _domains((9,))
    a = list(epoch_batches(domains, 4, torch.Generator().manual_seed(3), None, "cpu"))
    b = list(balanced_batches(domains, 4, torch.Generator().manual_seed(3), None))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_streamed_batches_through_pinned_buffers_equal_resident_ones():
    domains = _domains((40, 30), side=16)
    augment = make_augment(AugmentConfig(preset="domainbed", engine="batched"), 12)
    on_device = [(x.cuda(), y.cuda()) for x, y in domains]
    resident = list(balanced_batches(on_device, 8, torch.Generator().manual_seed(2), augment))
    streamed = list(epoch_batches(domains, 8, torch.Generator().manual_seed(2), augment, "cuda"))
    assert len(resident) == len(streamed)
    for (xr, yr), (xs, ys) in zip(resident, streamed, strict=True):
        assert xs.is_cuda and torch.equal(xr, xs) and torch.equal(yr, ys)
