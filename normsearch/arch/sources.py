"""Networks by source: a torchvision classification builder, a timm model, or any callable returning an
nn.Module (``"package.module:function"``), always with random weights (nothing is downloaded).

`build_source(kind, name, kwargs, num_classes, in_channels, device)` is the one door; an unknown name is one
line with the closest names, a missing timm one line naming the extra. `structure_of` reads (and caches per
backbone) the Structure of such a network from a build on the meta device, so `ArchConfig.resolve()` stays
cheap: the network is built and traced once per backbone and process.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from normsearch.arch.families import analyze
from normsearch.errors import NormsearchError

SOURCES = ("torchvision", "timm", "module")


def torchvision_names() -> list[str]:
    """Every classification builder torchvision registers (`list_models(module=torchvision.models)`)."""
    # deferred: reading a run imports this module but never torchvision (test_show_rows.py)
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return f"; closest: {', '.join(close)}" if close else ""


def _accepts(fn: Any, key: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _torchvision(name: str, kwargs: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    import torchvision  # deferred, as in `torchvision_names`

    names = torchvision_names()
    if name not in names:
        raise NormsearchError(
            f"backbone.torchvision: no classification builder {name!r}{_closest(name, names)}"
        )
    if in_channels != 3:
        raise NormsearchError("backbone.in_channels: torchvision builders take 3 input channels")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _timm(name: str, kwargs: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise NormsearchError(
            "backbone.timm: timm is not installed; install the extra: pip install 'normsearch[timm]'"
        ) from None
    names = timm.list_models()
    if name not in names:
        raise NormsearchError(f"backbone.timm: no timm model {name!r}{_closest(name, names)}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def _module(path: str, kwargs: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    module_name, colon, attr = path.partition(":")
    if not colon or not module_name or not attr:
        raise NormsearchError(f"backbone.module: {path!r} must be 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise NormsearchError(f"backbone.module: cannot import {module_name!r}: {error}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise NormsearchError(
            f"backbone.module: {module_name} has no callable {attr!r}{_closest(attr, public)}"
        )
    args = dict(kwargs)
    if _accepts(fn, "num_classes"):
        args.setdefault("num_classes", num_classes)
    if in_channels != 3 and _accepts(fn, "in_channels"):
        args.setdefault("in_channels", in_channels)
    try:
        model = fn(**args)
    except TypeError as error:
        raise NormsearchError(f"backbone.kwargs: {path} rejected {sorted(args)}: {error}") from None
    if not isinstance(model, nn.Module):
        raise NormsearchError(f"backbone.module: {path} returned {type(model).__name__}, not an nn.Module")
    return model


_BUILDERS = {"torchvision": _torchvision, "timm": _timm, "module": _module}


def build_source(
    kind: str,
    name: str,
    kwargs: dict[str, Any],
    num_classes: int,
    in_channels: int = 3,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Build the network `name` from source `kind` with random weights (on `device`, e.g. "meta")."""
    builder = _BUILDERS[kind]
    if device is None:
        return builder(name, kwargs, num_classes, in_channels)
    try:
        with torch.device(device):
            return builder(name, kwargs, num_classes, in_channels)
    except NormsearchError:
        raise
    except Exception:  # some builders compute on tensors while building (RegNet): build, then move
        return builder(name, kwargs, num_classes, in_channels).to(device)


@lru_cache(maxsize=64)
def _analysis(key: str):
    spec = json.loads(key)
    model = build_source(spec["kind"], spec["name"], spec["kwargs"], 10, spec["in_channels"], "meta")
    return analyze(model)


def structure_of(kind: str, name: str, kwargs: dict[str, Any], in_channels: int = 3):
    """The Structure of a network by source, built once per process on the meta device."""
    key = json.dumps(
        {"kind": kind, "name": name, "kwargs": kwargs, "in_channels": in_channels}, sort_keys=True
    )
    return _analysis(key).structure
