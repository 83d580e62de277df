"""Every registered normalizer under `torch.autocast`: statistics in float32, output in the input's dtype.

The reference is the same layer in float32 on the same (half-precision-rounded) input, so the difference
measures only what the layer itself loses. Tolerance: 1e-2 absolute + 1e-2 relative, about four bfloat16
rounding steps (bfloat16 keeps 8 significant bits, 2^-8 = 0.4 %); statistics accumulated in bfloat16 over
a 16×16 map are off by several percent.
"""

from __future__ import annotations

import copy

import pytest
import torch

from normsearch.data.pipeline import domain_labels
from normsearch.norms import CrossNorm, make_norm, set_domains
from tests.norms.test_conformance import SPECS

TOLERANCE = {"rtol": 1e-2, "atol": 1e-2}


def _pair(spec: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    layer = make_norm(spec, 8).to(device)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():  # away from the initial values, so every term matters
            p.add_(0.2 * torch.randn(p.shape, generator=gen).to(device))
    if isinstance(layer, CrossNorm):
        layer.active = True
    # Domain-routed layers (DSON, cross-domain MixStyle) get a balanced batch's labels (6 images).
    set_domains(layer, domain_labels(6, 3 if "domains=3" in spec else 2).to(device))
    return layer, copy.deepcopy(layer)


def _check(spec: str, device: str, dtype: torch.dtype) -> None:
    layer, reference = _pair(spec, device)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 8, 16, 16, generator=gen) * 3 + 2).to(device=device, dtype=dtype)
    xr = x.float().requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    expected = reference(xr)
    with torch.autocast(device_type=device, dtype=dtype):
        y = layer(xa)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, **TOLERANCE)
    grad = torch.randn(x.shape, generator=gen).to(device)
    y.float().backward(grad)
    expected.backward(grad)
    assert xa.grad is not None and xa.grad.dtype == dtype and torch.isfinite(xa.grad).all()
    torch.testing.assert_close(xa.grad.float(), xr.grad, rtol=5e-2, atol=5e-2)
    for name, p in layer.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), name
    for (name, b), c in zip(layer.named_buffers(), reference.buffers(), strict=True):
        assert b.dtype == c.dtype, name  # running statistics stay float32
        if b.is_floating_point():
            torch.testing.assert_close(b, c, **TOLERANCE)
    layer.eval(), reference.eval()
    with torch.no_grad():
        expected = reference(x.float())
        with torch.autocast(device_type=device, dtype=dtype):
            z = layer(x)
    assert z.dtype == dtype
    torch.testing.assert_close(z.float(), expected, **TOLERANCE)


@pytest.mark.parametrize("spec", SPECS)
def test_cpu_bfloat16(spec: str) -> None:
    _check(spec, "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_cuda(spec: str, dtype: torch.dtype) -> None:
    _check(spec, "cuda", dtype)
