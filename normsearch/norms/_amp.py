"""Mixed precision for the normalizers: statistics in float32 under `torch.autocast`, output in the
input's dtype.

Under autocast a convolution hands its normalizer a bfloat16 or float16 map. Means and variances of
such a map accumulated in half precision lose two to three digits, and some of the element-wise ops our
layers use (products, reductions) are on autocast's lower-precision lists. So every layer of ours runs
its forward with autocast off on a float32 copy of its input (`float32_forward`), and every custom
autograd Function declares the same through `torch.amp.custom_fwd(..., cast_inputs=torch.float32)` for
both the CPU and the CUDA autocast (`amp_function`), so that calling a Function directly is safe too.
Torch's own BatchNorm, InstanceNorm and GroupNorm accumulate in float32 themselves and are left as they
are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
_DEVICES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (torch >= 2.4 API, with the older spellings as fallback)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def float32_forward(forward: F) -> F:
    """Decorate a normalizer's ``forward(self, x)``: under autocast, or for a half-precision input, run it
    with autocast off on ``x.float()`` and return the result in ``x``'s dtype. A no-op otherwise, so
    float32 and float64 numerics are untouched."""

    @functools.wraps(forward)
    def wrapper(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype not in LOW_PRECISION and not autocast_enabled(device):
            return forward(self, x)
        with torch.autocast(device_type=device, enabled=False):
            y = forward(self, x.float() if x.dtype in LOW_PRECISION else x)
        return y.to(x.dtype)

    return wrapper  # type: ignore[return-value]


def _stack(decorator: Callable[..., Any], fn: F, **kwargs: Any) -> F:
    for device in _DEVICES:
        fn = decorator(fn, device_type=device, **kwargs)
    return fn


def amp_function(cls: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """Class decorator for a custom autograd Function: under CPU or CUDA autocast its forward receives
    float32 inputs and runs with autocast off, and its backward runs under the same state (torch's
    `custom_fwd(cast_inputs=torch.float32)` / `custom_bwd`). Torch < 2.4 lacks the device-generic
    decorators; there the callers' `float32_forward` does the cast."""
    custom_fwd = getattr(torch.amp, "custom_fwd", None)
    custom_bwd = getattr(torch.amp, "custom_bwd", None)
    if custom_fwd is None or custom_bwd is None:
        return cls
    forward = cls.__dict__["forward"].__func__
    backward = cls.__dict__["backward"].__func__
    cls.forward = staticmethod(_stack(custom_fwd, forward, cast_inputs=torch.float32))  # type: ignore[method-assign]
    cls.backward = staticmethod(_stack(custom_bwd, backward))  # type: ignore[method-assign]
    return cls
