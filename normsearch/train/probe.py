"""How much device memory one trial's training step takes, measured before the trials start, so that a trial
that cannot fit in its GPU fraction (`resources.gpu`) is one line instead of an out-of-memory error in
every Ray worker.

The probe runs the actual network's forward and backward at the recipe's batch size, image size,
precision and layout, and two optimizer steps (SGD momentum's buffers exist after the first). On a CUDA
device the peak is the allocator's (`max_memory_allocated`). Elsewhere it is counted on the meta device
(no memory is spent, nothing is computed): the parameters, their gradients and momentum, the batch, and
every tensor autograd saves for the backward pass, each storage once. A CUDA context (`CONTEXT_BYTES`) is
added either way: every trial process holds its own.

The device's capacity is `NORMSEARCH_DEVICE_MEMORY_GB` where set (to plan for a device this machine does
not have, and in tests), else the CUDA device's total memory, else unknown (nothing is checked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from normsearch.errors import NormsearchError
from normsearch.train.precision import autocast

GiB = 2**30
CONTEXT_BYTES = GiB // 2  # a CUDA context and cuDNN/cuBLAS workspaces, per process
CAPACITY_ENV = "NORMSEARCH_DEVICE_MEMORY_GB"


def device_capacity() -> int | None:
    """Bytes of device memory a trial's GPU has: `$NORMSEARCH_DEVICE_MEMORY_GB`, else CUDA device 0's
    total, else None."""
    text = os.environ.get(CAPACITY_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise NormsearchError(f"{CAPACITY_ENV}={text!r}: allowed: a positive number of GiB")
        return int(value * GiB)
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    for _ in range(2):
        with autocast(x.device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _counted_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> int:
    """Parameters ×3 (weights, gradients, momentum), the batch, and autograd's saved tensors."""
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (id(t.untyped_storage()) if t.device.type != "meta" else id(t), t.shape, t.dtype)
        saved[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device, precision):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 3 * params + buffers + x.numel() * x.element_size() + sum(saved.values())


@dataclass(frozen=True)
class Probe:
    """A trial's measured need, bytes, and how it was measured."""

    need: int
    how: str


def probe_step_memory(
    model_fn,
    batch_size: int,
    size: int,
    in_channels: int,
    num_classes: int,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str | torch.device | None = None,
) -> Probe:
    """Peak device memory of training steps of `model_fn()` (see the module docstring), plus a CUDA
    context. `device` None: CUDA where there is one, else counted on the meta device."""
    dev = torch.device(device) if device is not None else None
    if dev is None:
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        model = model_fn().to(dev, memory_format=fmt).train()
        x = torch.randn(batch_size, in_channels, size, size, device=dev).to(memory_format=fmt)
        y = torch.randint(0, num_classes, (batch_size,), device=dev)
        _step(model, x, y, precision)
        torch.cuda.synchronize(dev)
        need = torch.cuda.max_memory_allocated(dev) - base
        del model, x, y
        torch.cuda.empty_cache()
        return Probe(need + CONTEXT_BYTES, "measured on the device")
    try:
        with torch.device("meta"):
            model = model_fn().train()
        x = torch.empty(batch_size, in_channels, size, size, device="meta").to(memory_format=fmt)
        y = torch.zeros(batch_size, dtype=torch.long, device="meta")
        need = _counted_bytes(model, x, y, "fp32")  # fp32's activations: a bound for bf16 and fp16
        how = "counted on the meta device"
    except (RuntimeError, NotImplementedError, TypeError):  # a layer the meta device cannot run
        model = model_fn().train()
        x = torch.randn(batch_size, in_channels, size, size).to(memory_format=fmt)
        y = torch.randint(0, num_classes, (batch_size,))
        need = _counted_bytes(model, x, y, precision)
        how = "counted on the CPU"
    return Probe(need + CONTEXT_BYTES, how)


def fitting_fraction(need: int, capacity: int) -> float | None:
    """The largest share 1/k of the device (k trials per GPU) that holds `need`; None when even the whole
    device does not."""
    if need > capacity:
        return None
    return 1.0 / (capacity // need)


def check_fraction(fraction: float, probe: Probe, capacity: int, what: str) -> None:
    """One line when `probe.need` exceeds `fraction` of `capacity`, naming the fraction that fits."""
    if probe.need <= fraction * capacity:
        return
    fits = fitting_fraction(probe.need, capacity)
    advice = (
        f"resources.gpu: {fits:.3g} fits ({round(1 / fits)} trial(s) per GPU)"
        if fits is not None
        else "no fraction fits: lower train.batch_size or data.size"
    )
    raise NormsearchError(
        f"resources.gpu {fraction:g}: a trial needs {probe.need / GiB:.2f} GiB of device memory ({what}, "
        f"{probe.how}, with {CONTEXT_BYTES / GiB:.1f} GiB of CUDA context) but {fraction:g} of the "
        f"{capacity / GiB:.1f} GiB device is {fraction * capacity / GiB:.2f} GiB; {advice}"
    )
