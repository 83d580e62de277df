"""How a training batch's source-domain labels reach the layers that need them (DSON, cross-domain MixStyle).

The trainer's balanced batches put each source domain's images in one contiguous block (`data.pipeline.
balanced_batches`); the trainer calls `set_domains(model, labels)` before each forward pass, as it calls
`CrossNormPolicy.step()`, and every layer with ``uses_domains = True`` keeps the labels until the next call.
Layers never guess the labels: one that needs them in training and has none (or labels of another batch
size) raises a NormsearchError naming what is missing.
"""

from __future__ import annotations

import torch
from torch import nn

from normsearch.errors import NormsearchError


def domain_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that read the batch's domain labels."""
    return [m for m in model.modules() if getattr(m, "uses_domains", False)]


def set_domains(model: nn.Module, labels: torch.Tensor | None) -> int:
    """Give every domain-routed layer of `model` this batch's labels (one int per image, 0..D-1), or None
    to clear them. Returns how many layers received them."""
    layers = domain_layers(model)
    for layer in layers:
        layer.domains = labels
    return len(layers)


def checked_domains(layer: nn.Module, batch: int, name: str) -> torch.Tensor:
    """The labels `layer` was given for a batch of `batch` images, or a NormsearchError saying why not."""
    labels = getattr(layer, "domains", None)
    if labels is None:
        raise NormsearchError(
            f"{name}: needs the batch's source-domain labels in training (two or more sources; the trainer "
            "passes them with set_domains)"
        )
    if labels.shape != (batch,):
        raise NormsearchError(f"{name}: {tuple(labels.shape)} domain labels for a batch of {batch} images")
    return labels


def routed_layers(model: nn.Module, sources: int) -> int:
    """How many layers of `model` read domain labels, after checking that they fit a run on `sources`
    source domains (a DSON layer has one branch per source; cross-domain MixStyle needs two or more).
    Random-pairing MixStyle reads none."""
    count = 0
    for name, layer in model.named_modules():
        if not getattr(layer, "uses_domains", False):
            continue
        if hasattr(layer, "num_domains") and layer.num_domains != sources:
            raise NormsearchError(
                f"{name}: dson:domains={layer.num_domains}, but the recipe trains on {sources} source "
                f"domain(s); set norm.dson.domains to {sources}"
            )
        if getattr(layer, "mix", None) == "crossdomain" and sources < 2:
            raise NormsearchError(
                f"{name}: mixstyle mix=crossdomain needs two or more source domains; this recipe has one "
                "(use mix: random)"
            )
        count += getattr(layer, "mix", "crossdomain") == "crossdomain" or hasattr(layer, "num_domains")
    return count
