"""Precision, memory layout and device placement for training: what GPU clusters expect, on the same code
path that the CPU test suite runs.

- `train.precision`: ``fp32`` (no autocast, today's numerics bit for bit), ``bf16`` or ``fp16`` (autocast;
  parameters and optimizer state stay float32, fp16 adds a GradScaler whose state goes into TrainState).
  Normalizers keep their statistics in float32 under autocast (the norms' own business).
- `train.channels_last`: the model's 4-D weights and every training batch in NHWC, the layout tensor cores
  read without transposes.
- Placement: the model, the standardisation constants and the uint8 image tensors move to the device once
  (from pinned host memory, non-blocking), so batches are sliced, augmented and standardised on the device
  and nothing crosses PCIe per step but the shuffled indices. On the CPU every one of these is a no-op.
  Image data over the device cache budget (`data.device_cache_gb`) stays on the host and streams
  (`normsearch.data.stream`).
- `cudnn.benchmark` (on CUDA, `train.cudnn_benchmark`): cuDNN times its convolution algorithms once per input
  shape and keeps the fastest; off, it picks deterministically.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Literal

import torch

from normsearch.data.stream import place as place  # data placement lives with the data (data/stream.py)
from normsearch.errors import NormsearchError

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device, cudnn_benchmark: bool = True) -> torch.device:
    """The torch device to train on; CUDA asked for where there is none is one line. Sets
    `cudnn.benchmark` for CUDA devices."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NormsearchError(f"device {device!r}: allowed: cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NormsearchError(f"device {device}: no CUDA device is available here")
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return dev


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to the precision's dtype on `device`; fp32 is no context at all (unchanged numerics)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (whose small exponent range underflows gradients without one), else None:
    bf16 has float32's range."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def layout(channels_last: bool) -> torch.memory_format:
    """The memory format of the model's 4-D tensors and of training batches."""
    return torch.channels_last if channels_last else torch.contiguous_format


