"""Data that does not fit on the device: a domain over the device cache budget stays in host memory (for a
folder domain, the memory-mapped decoded cache, `data.cache`) and its training batches stream to the
device through pinned host buffers, one batch in flight.

The budget (`data.device_cache_gb`; default `FREE_FRACTION` of the device's free memory divided by the
trials that share it, read from the Ray resources this process was given) is spent in the order the
tensors are placed (each source's train split first, then the val splits): what fits is copied to the
device once (`place`), what does not stays on the host.

Streaming keeps the resident path's numbers: the indices and a batched augmentation's parameters of batch
k+1 are drawn (from the trial's generator) and its images gathered on the host and copied, on a side CUDA
stream, into the device while batch k trains; batch k is augmented on the device with the parameters drawn
for it. The same seed gives the same batches either way (`tests/data/test_stream.py`). Two pinned buffers
alternate; a buffer is refilled only after the copy out of it has finished (an event per copy).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch

from normsearch.data.pipeline import augmented, balanced_batches, sliced_batches

FREE_FRACTION = 0.5  # of the device's free memory, for all the trials on it; the rest is for training
GiB = 2**30

Pair = tuple[torch.Tensor, torch.Tensor]


def device_share() -> float:
    """The fraction of a GPU this process was given by Ray (`resources.gpu`), 1 outside a Ray trial."""
    ray = sys.modules.get("ray")  # only a Ray worker has imported it; nothing is started here
    if ray is None or not ray.is_initialized():
        return 1.0
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    return gpus if 0 < gpus < 1 else 1.0


def cache_budget(
    device: torch.device, device_cache_gb: float | None, share: float | None = None
) -> int | None:
    """Bytes of image data this trial may hold on `device`: `device_cache_gb`, else `FREE_FRACTION` of
    the free device memory times this trial's share of the device; None on the CPU (nothing is copied)."""
    if device.type == "cpu":
        return None
    if device_cache_gb is not None:
        return int(device_cache_gb * GiB)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * FREE_FRACTION * (device_share() if share is None else share))


def place(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`, copied once from pinned host memory without blocking; itself on the CPU."""
    if device.type == "cpu":
        return tensor
    if device.type != "cuda":  # only CUDA pins host memory
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class DevicePlacer:
    """`place` within a budget: each tensor goes to the device while the bytes placed so far fit, else it
    stays where it is (on the host, to be streamed)."""

    def __init__(self, device: torch.device, budget: int | None) -> None:
        self.device, self.budget, self.used = device, budget, 0
        self.streamed: list[int] = []  # sizes in bytes of what stayed on the host

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return tensor
        nbytes = tensor.numel() * tensor.element_size()
        if self.budget is not None and self.used + nbytes > self.budget:
            self.streamed.append(nbytes)
            return tensor
        self.used += nbytes
        return place(tensor, self.device)


class _Buffers:
    """Two host buffers (pinned for CUDA) that batches are gathered into before their copy; a buffer is
    reused only once the copy out of it has completed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.slots: list[dict[str, Any]] = [{}, {}]
        self.turn = 0

    def _buffer(self, slot: dict[str, Any], name: str, like: torch.Tensor) -> torch.Tensor:
        held = slot.get(name)
        if (
            held is None
            or held.shape[1:] != like.shape[1:]
            or len(held) < len(like)
            or held.dtype != like.dtype
        ):
            held = torch.empty((max(len(like), 1), *like.shape[1:]), dtype=like.dtype, pin_memory=self.cuda)
            slot[name] = held
        return held[: len(like)]

    def send(
        self, x: torch.Tensor, y: torch.Tensor, params: Any
    ) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
        """Gather (x, y) into the next buffer and start their copy to the device; returns the device
        tensors and the copy's event."""
        slot = self.slots[self.turn]
        self.turn = 1 - self.turn
        if slot.get("event") is not None:
            slot["event"].synchronize()  # the copy out of this buffer (two batches ago) is done
        hx, hy = self._buffer(slot, "x", x), self._buffer(slot, "y", y)
        hx.copy_(x)
        hy.copy_(y)
        if not self.cuda:  # the CPU stands in for the device: a copy, as `.to(cuda)` would make
            return hx.clone(), hy.clone(), params, None
        with torch.cuda.stream(self.stream):
            dx, dy = hx.to(self.device, non_blocking=True), hy.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        slot["event"] = event
        return dx, dy, params, event  # the small parameters follow on the compute stream


def streamed_batches(
    domains: list[Pair],
    batch_size: int,
    generator: torch.Generator,
    augment=None,
    device: torch.device | str = "cpu",
) -> Iterator[Pair]:
    """One epoch of the batches `balanced_batches` gives for the same generator state, with the domains
    on the host and every batch copied to `device` while the previous one trains (module docstring)."""
    device = torch.device(device)
    host = [(x.cpu(), y.cpu()) for x, y in domains]  # a part that did fit comes back (rare: mixed budgets)
    buffers = _Buffers(device)
    source = sliced_batches(host, batch_size, generator, augment)
    ahead = next(source, None)
    pending = buffers.send(*ahead) if ahead is not None else None
    while pending is not None:
        x, y, params, event = pending
        ahead = next(source, None)  # batch k+1 is gathered and its copy started before k trains
        pending = buffers.send(*ahead) if ahead is not None else None
        if event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            x.record_stream(current)
            y.record_stream(current)
        yield augmented(x, params, augment), y


def epoch_batches(
    domains: list[Pair],
    batch_size: int,
    generator: torch.Generator,
    augment=None,
    device: torch.device | str = "cpu",
) -> Iterator[Pair]:
    """The training batches of one epoch: sliced from the domains where they live (`balanced_batches`),
    or streamed to the device when a domain stayed on the host (over the budget)."""
    device = torch.device(device)
    if device.type != "cpu" and any(x.device.type == "cpu" for x, _ in domains):
        return streamed_batches(domains, batch_size, generator, augment, device)
    return balanced_batches(domains, batch_size, generator, augment)
