"""Checkpoints for `backbone.weights`: a torchvision weights name, or a file.

`load_weights(W, backbone)` reads any of

- a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ``IMAGENET1K_V2``, whatever the network's
  weights enum lists), resolved with torchvision's weights API: read from the torch hub cache
  (``torch.hub.get_dir()/checkpoints``), downloaded into it where the internet is reachable. With
  ``NORMSEARCH_OFFLINE=1`` nothing is downloaded. A file that is neither cached nor downloadable is one line
  naming the file, its URL and the folder to put it in;
- a torchvision/timm-style state_dict file (``.pt``/``.pth``/``.bin``, or ``.safetensors``), bare or
  wrapped in ``{"state_dict": ...}`` / ``{"model": ...}``, with or without DataParallel's ``module.`` prefix;
- a normsearch checkpoint (`save_checkpoint`): the model's state_dict, the ArchConfig it came from and its
  provenance (how it was trained, on what, with which versions);
- the IBN-Net authors' released IBN-ResNets (``resnet50_ibn_a-d9d0bb7b.pth``, ``resnet50_ibn_b-9ca61e85.pth``
  and their 18/34/101 siblings, github.com/XingangPan/IBN-Net). Their IBN module keeps two children,
  ``X.IN`` (the first int(C/2) channels, affine, no running statistics) and ``X.BN`` (the rest); IBN-b adds
  ``<block>.IN`` after the residual addition. Both are mapped onto our slot names: ``X.IN`` + ``X.BN`` become
  one IBN slot ``X`` (affine over all C channels, running statistics over the BN part, exactly our IBN's
  tensors), and a lone ``<block>.IN`` becomes ``<block>.post``.

Whatever the source, a `Checkpoint` holds one flat state_dict keyed by our slot and module names; what goes
where in a network is `normsearch.models.inherit`'s business.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from normsearch.arch.config import plan_of
from normsearch.errors import NormsearchError
from normsearch.run.files import atomic_write_bytes, first_line, weights_only_reason

FORMAT = "normsearch-checkpoint"
VERSION = 1
OFFLINE_ENV = "NORMSEARCH_OFFLINE"
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")
# Containers that training scripts wrap a state_dict in (torch examples, timm, Lightning, DomainBed).
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "network")
_RELEASED_IBN = re.compile(r"^(?P<slot>.+)\.(?P<part>IN|BN)\.(?P<tensor>[A-Za-z_]+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A state_dict keyed by our module names, where it came from, and (for normsearch checkpoints) the
    ArchConfig that produced it. `added`: module names of layers the checkpoint's own plan added to the plain
    backbone (after-addition norms, inserted modules), which a plan without them may drop without error:
    `declared_added`, or with None (a normsearch file) its `arch` resolved, only when first needed, so
    that loading a checkpoint resolves no architecture but the one being trained."""

    state_dict: dict[str, torch.Tensor]
    source: str
    format: str  # torchvision | state_dict | normsearch | ibn-net | in-memory
    arch: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    declared_added: frozenset[str] | None = frozenset()

    @cached_property
    def added(self) -> frozenset[str]:
        """Module names the checkpoint's own plan added (see the class docstring)."""
        if self.declared_added is not None:
            return self.declared_added
        return _arch_added(self.arch)

    def describe(self) -> dict[str, Any]:
        """What a record says this checkpoint is: its source, format and provenance."""
        return {"from": self.source, "format": self.format, **self.provenance}


def load_weights(
    weights: str | Path | Checkpoint | Mapping[str, torch.Tensor],
    backbone: Any = None,
    source: str = "backbone.weights",
) -> Checkpoint:
    """Resolve `weights` (a torchvision weights name, a file path, a Checkpoint or a state_dict) into a
    Checkpoint. `backbone` (the ArchConfig's Backbone) names the torchvision network a weights name refers
    to. Errors are one NormsearchError line naming `source`, the value and what is allowed."""
    if isinstance(weights, Checkpoint):
        return weights
    if isinstance(weights, Mapping):
        return _from_mapping(dict(weights), "a state_dict in memory", "in-memory")
    text = str(weights)
    path = Path(text).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.exists() and not path.is_dir():
        # A FIFO, socket or device: opening it would block or never end; refused by stat alone.
        raise NormsearchError(
            f"{source}: {text}: not a regular file (a FIFO, socket or device); give a checkpoint file"
        )
    if isinstance(weights, Path) or "/" in text or os.sep in text or path.suffix.lower() in FILE_SUFFIXES:
        raise NormsearchError(f"{source}: {text}: no such file")
    return _torchvision(text, backbone, source)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write a normsearch checkpoint (state_dict on the CPU, the ArchConfig, provenance) atomically: a
    reader never sees half a file, a crash leaves the previous file in place."""
    import io

    state = {k: v.detach().cpu().contiguous() for k, v in checkpoint.state_dict.items()}
    arch = json.dumps(checkpoint.arch)
    provenance = json.dumps(checkpoint.provenance, default=str)
    if Path(path).suffix.lower() == ".safetensors":
        # The name promises safetensors: tensors plus string metadata (the ArchConfig and provenance as
        # JSON), which `_read_file` turns back into a normsearch checkpoint.
        from safetensors.torch import save

        metadata = {"format": FORMAT, "version": str(VERSION), "arch": arch, "provenance": provenance}
        return atomic_write_bytes(path, save(state, metadata=metadata))
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": state,
        # Plain JSON types, which `torch.load(weights_only=True)` reads back (a TorchVersion is not one).
        "arch": json.loads(arch),
        "provenance": json.loads(provenance),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def torchvision_name(backbone: Any) -> str | None:
    """The torchvision builder name of a backbone (a preset that torchvision also builds), or None."""
    # deferred: reading a run imports this module but never torchvision (test_show_rows.py)
    import torchvision

    name = getattr(backbone, "torchvision", None) or getattr(backbone, "preset", None)
    return name if name in torchvision.models.list_models() else None


# --- sources --------------------------------------------------------------------------------------------
def _torchvision(name: str, backbone: Any, source: str) -> Checkpoint:
    import torchvision  # deferred, as in `torchvision_name`

    model_name = torchvision_name(backbone) if backbone is not None else None
    if model_name is None:
        preset = getattr(backbone, "preset", None)
        raise NormsearchError(
            f"{source}: {name!r} is not a file, and torchvision weights names need a torchvision network "
            f"(this backbone is {preset or 'an explicit ResNet'}; torchvision weights exist for presets "
            "resnet18, resnet34, resnet50, resnet101, resnext50_32x4d, wide_resnet50_2); give a checkpoint "
            "file instead"
        )
    enum = torchvision.models.get_model_weights(model_name)
    if name not in enum.__members__:
        raise NormsearchError(
            f"{source}: unknown weights {name!r} for torchvision {model_name}; allowed: "
            f"{', '.join(enum.__members__)}, or a checkpoint file"
        )
    entry = enum[name]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(urlparse(entry.url).path).name
    label = f"{entry} (torchvision {model_name})"
    if not file.is_file() and os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise NormsearchError(_offline(source, label, file, entry.url, f"{OFFLINE_ENV} is set"))
    if not file.is_file():
        try:  # into the hub cache, hash-checked against the prefix in the file name, as torchvision does
            folder.mkdir(parents=True, exist_ok=True)
            digest = re.search(r"-([a-f0-9]+)\.", file.name)
            torch.hub.download_url_to_file(
                entry.url, str(file), digest[1] if digest else None, progress=False
            )
        except (OSError, RuntimeError) as error:  # URLError and HTTPError are OSErrors
            reason = str(getattr(error, "reason", "") or error).splitlines()[0] or type(error).__name__
            raise NormsearchError(_offline(source, label, file, entry.url, reason)) from None
    return Checkpoint(
        _state_of(_read_file(file).state_dict, str(file)),
        label,
        "torchvision",
        provenance={"weights": str(entry), "url": entry.url},
    )


def _offline(source: str, label: str, file: Path, url: str, reason: str) -> str:
    return (
        f"{source}: {label}: {file.name} is not in the torch hub cache {file.parent} and cannot be "
        f"downloaded here ({reason}); download {url} and put it in that folder"
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A .safetensors file as a plain state_dict, or, when its metadata says it is a normsearch
    checkpoint (`save_checkpoint`), as the same mapping `torch.load` gives for the .pt form."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = load_file(str(path), device="cpu")
    if metadata.get("format") != FORMAT:
        return state
    try:
        arch, provenance = json.loads(metadata["arch"]), json.loads(metadata.get("provenance") or "{}")
    except (KeyError, ValueError) as error:
        raise NormsearchError(f"{path}: its normsearch metadata is damaged ({error})") from None
    return {"format": FORMAT, "state_dict": state, "arch": arch, "provenance": provenance}


def _read_file(path: Path) -> Checkpoint:
    try:
        if path.suffix.lower() == ".safetensors":
            raw: Any = _read_safetensors(path)
        else:
            with warnings.catch_warnings():  # torch warns about a bare pickle's protocol before it refuses
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise NormsearchError(f"{path}: reading .safetensors needs the safetensors package") from None
    except Exception as error:  # a pickle, a truncated file, a non-checkpoint: torch raises many types
        # miniz's first sentence says enough of a damaged zip; its next ones repeat it
        detail = weights_only_reason(error) or first_line(error).strip().split(". ")[0]
        raise NormsearchError(
            f"{path}: cannot read as a checkpoint, which holds only tensors and plain values: {detail}; "
            "nothing in it was loaded"
        ) from None
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        state = _state_of(raw.get("state_dict"), str(path))
        arch = raw.get("arch")
        return Checkpoint(
            state, str(path), "normsearch", arch, dict(raw.get("provenance") or {}), declared_added=None
        )
    if not isinstance(raw, Mapping):
        raise NormsearchError(f"{path}: expected a state_dict (tensors by name), not {type(raw).__name__}")
    return _from_mapping(dict(raw), str(path), "state_dict")


def _from_mapping(raw: dict[str, Any], source: str, fmt: str) -> Checkpoint:
    for key in _WRAPPERS:
        if isinstance(raw.get(key), Mapping):
            raw = dict(raw[key])
            break
    state = _state_of(raw, source)
    if any(_RELEASED_IBN.match(key) for key in state):
        state, added = _map_released_ibn(state)
        return Checkpoint(state, source, "ibn-net", declared_added=added)
    return Checkpoint(state, source, fmt)


def _state_of(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict, DataParallel's `module.` prefix removed."""
    if not isinstance(raw, Mapping) or not raw:
        raise NormsearchError(f"{source}: no state_dict in this file")
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise NormsearchError(
            f"{source}: not a state_dict: {bad[0]!r} is a {type(raw[bad[0]]).__name__}, not a tensor"
        )
    keys = list(raw)
    if all(k.startswith("module.") for k in keys):
        return {k.removeprefix("module."): v for k, v in raw.items()}
    return dict(raw)


def _map_released_ibn(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """The IBN-Net release's `X.IN.*` / `X.BN.*` keys as our IBN slot `X`, a lone `B.IN.*` as `B.post`."""
    parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _RELEASED_IBN.match(key)
        if match is None:
            out[key] = value
        else:
            parts.setdefault(match["slot"], {}).setdefault(match["part"], {})[match["tensor"]] = value
    added = set()
    for slot, halves in parts.items():
        inst, batch = halves.get("IN", {}), halves.get("BN")
        if batch is None:  # IBN-b: an InstanceNorm after the residual addition
            added.add(f"{slot}.post")
            out.update({f"{slot}.post.{name}": t for name, t in inst.items()})
            continue
        for name in ("weight", "bias"):
            pieces = [t for t in (inst.get(name), batch.get(name)) if t is not None]
            if pieces:
                out[f"{slot}.{name}"] = torch.cat(pieces)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if name in batch:
                out[f"{slot}.{name}"] = batch[name]
    return out, frozenset(added)


def _arch_added(arch: Any) -> frozenset[str]:
    """The modules a normsearch checkpoint's own plan added (its `arch` section resolved once)."""
    if not isinstance(arch, Mapping):
        return frozenset()
    try:
        return frozenset(plan_of(dict(arch), "checkpoint arch").added)
    except NormsearchError:
        return frozenset()  # an ArchConfig this version cannot read: nothing is known to be optional
