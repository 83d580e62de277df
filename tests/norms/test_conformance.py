"""Every registered normalizer kind honours the same contract (timm's norm-layer conformance idea)."""

from __future__ import annotations

import inspect
import io

import pytest
import torch

from normsearch.norms import REGISTRY, CrossNorm, make_norm, set_domains

# One spec per kind plus the variants with their own code paths.
SPECS = sorted(
    {kind if kind != "gn" else "gn:groups=4" for kind in REGISTRY}
    | {
        "ibn:ratio=0.25",
        "sn:mode=hard,mean=in,var=bn",
        "sn:mode=hard,mean=bn,var=bn,unbiased=false",
        "crossnorm:mode=1ins,crop=both",
        "selfnorm:form=two_branch",
        "mixstyle:p=1.0",
        "mixstyle:p=1.0,mix=crossdomain",
        "dsu:p=1.0",
        "dson:domains=3",
    }
)


def test_every_kind_is_covered() -> None:
    assert {s.split(":")[0] for s in SPECS} == set(REGISTRY)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_num_channels_is_the_first_constructor_argument(kind: str) -> None:
    factory = REGISTRY[kind].factory
    first = next(iter(inspect.signature(factory).parameters))
    assert first == "num_channels"


def _build(spec: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = make_norm(spec, 8).to(dtype)
    if isinstance(layer, CrossNorm):
        layer.active = True
    # Domain-routed layers (DSON, cross-domain MixStyle) get the labels of a balanced 4-image batch.
    set_domains(layer, torch.tensor([0, 0, 1, 2]) if "domains=3" in spec else torch.tensor([0, 0, 1, 1]))
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", SPECS)
def test_forward_backward_train_eval(spec: str, dtype: torch.dtype) -> None:
    layer = _build(spec, dtype)
    x = torch.randn(4, 8, 6, 5, dtype=dtype, requires_grad=True)
    layer.train()
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    layer.eval()
    with torch.no_grad():
        z = layer(x)
    assert z.shape == x.shape and torch.isfinite(z).all()


@pytest.mark.parametrize("spec", SPECS)
def test_state_dict_round_trip(spec: str) -> None:
    layer = _build(spec, torch.float32, seed=1)
    layer.train()
    for _ in range(2):
        layer(torch.randn(4, 8, 5, 5))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    clone = _build(spec, torch.float32, seed=2)
    clone.load_state_dict(torch.load(buffer), strict=True)
    layer.eval(), clone.eval()
    x = torch.randn(3, 8, 5, 5)
    assert torch.equal(layer(x), clone(x))


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_output(spec: str) -> None:
    x = torch.randn(4, 8, 6, 6)
    a, b = _build(spec, torch.float32, seed=3), _build(spec, torch.float32, seed=3)
    for _ in range(3):
        assert torch.equal(a(x), b(x))
