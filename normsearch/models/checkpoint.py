"""A normsearch weights file: a trained network's state_dict with the ArchConfig that rebuilds it.

`normsearch export --weights best.pt` writes one from a run's final checkpoint, and
`normsearch.build_model("best.yaml", weights="best.pt")` loads it strictly: every tensor of the network must
be in the file with its shape, and nothing else may be.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch import nn

from normsearch.errors import NormsearchError

FORMAT = "normsearch-weights/1"


def save_weights(
    path: str | Path, state: dict[str, Any], arch: dict[str, Any], provenance: dict[str, Any]
) -> Path:
    """Write `state` (a state_dict) with the ArchConfig it belongs to, atomically."""
    import torch

    from normsearch.files import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "model": state, "arch": arch, "provenance": provenance}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_weights(path: str | Path) -> dict[str, Any]:
    """The state_dict in a weights file (a normsearch weights file, or a bare state_dict)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NormsearchError(f"weights {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise NormsearchError(
            f"weights {path}: not a torch checkpoint ({str(error).splitlines()[0][:120]})"
        ) from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return blob["model"]
    if isinstance(blob, dict) and all(isinstance(k, str) for k in blob):
        return blob
    raise NormsearchError(f"weights {path}: holds no state_dict")


def load_strict(model: nn.Module, state: dict[str, Any], source: str) -> nn.Module:
    """`model.load_state_dict(state, strict=True)` with a mismatch named in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unused = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unused or shapes:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("not in the network", unused),
            ("of another shape", shapes),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise NormsearchError(f"weights {source}: do not fit this network: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return model
