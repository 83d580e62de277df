"""normsearch: which normalization layers, where, make a CNN hold its accuracy under domain shift.

The public names are loaded lazily (PEP 562) so that `normsearch --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ArchConfig": "normsearch.arch",
    "NormPlan": "normsearch.arch",
    "apply_plan": "normsearch.models",
    "build_model": "normsearch.models",
    "load_arch": "normsearch.arch",
    "load_model": "normsearch.deploy",
    "NormsearchError": "normsearch.errors",
    "NormSpec": "normsearch.norms",
    "make_norm": "normsearch.norms",
    "recalibrate_bn": "normsearch.norms",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'normsearch' has no attribute {name!r}")
