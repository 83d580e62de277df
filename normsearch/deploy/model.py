"""`normsearch.load_model(DIR)`: the finalized network in eval mode and the preprocessing it was trained with.

The network is rebuilt from the folder's ArchConfig and its safetensors weights are loaded strictly (every
tensor must fit; nothing is unpickled). `preprocess(image)` turns a Pillow image or an image file of any
size into the normalised (3, H, W) float tensor the network expects, through the same decoding and resizing
as the training images (`normsearch.data.folder.image_tensor`) and the channel mean/std training used; with
several seeds the network is `SeedEnsemble`, whose output is the log of its members' mean probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.data.folder import IMAGE_SUFFIXES, image_tensor
from normsearch.data.pipeline import Standardizer
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.run.finalized import FinalFolder


class SeedEnsemble(nn.Module):
    """Networks of one configuration trained with different seeds; `forward` returns log(mean softmax), so
    that `softmax(output)` is the mean of the members' probabilities and `argmax` their joint choice."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([member(x).softmax(1) for member in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


class Preprocess:
    """An image (Pillow image or path) -> the normalised float tensor (3, H, W) the network expects.
    `classes` are the class names in output index order; `batch(images)` stacks several into (N, 3, H, W).
    `policy` is the test-time statistics policy the configuration was selected under (its ArchConfig's
    `norm.inference`: running, batch, adabn or mix:alpha=A); `normsearch evaluate` and `predict` apply it,
    and a plain `model(x)` in eval mode is `running` (see `normsearch.train.predicted_logits` for the
    others)."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str],
        policy: str = "running",
    ) -> None:
        self.size = size
        self.standardize = Standardizer(torch.tensor(list(mean)), torch.tensor(list(std)))
        self.classes = list(classes)
        self.policy = policy

    def pixels(self, image: Any) -> torch.Tensor:
        """The uint8 (3, size, size) tensor of an image, decoded and resized as training images were."""
        from PIL import Image, UnidentifiedImageError

        if isinstance(image, Image.Image):
            return image_tensor(image, self.size)
        path = Path(image)
        if path.is_dir():
            raise NormsearchError(f"{path}: is a folder, not an image")
        try:
            with Image.open(path) as handle:
                return image_tensor(handle, self.size)
        except FileNotFoundError:
            raise NormsearchError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise NormsearchError(
                f"{path}: not a readable image ({str(error).splitlines()[0][:80]}); images are "
                f"{', '.join(IMAGE_SUFFIXES)}"
            ) from None

    def __call__(self, image: Any) -> torch.Tensor:
        return self.standardize(self.pixels(image)[None])[0]

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        return self.standardize(torch.stack([self.pixels(i) for i in images]))


def preprocess_of(folder: FinalFolder) -> Preprocess:
    """The folder's preprocessing (preprocessing.json) as a callable."""
    spec = folder.preprocessing()
    policy = ((folder.document().get("arch") or {}).get("norm") or {}).get("inference", "running")
    try:
        size = int(spec["input_size"][0])
        return Preprocess(size, spec["mean"], spec["std"], spec["classes"], str(policy))
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise NormsearchError(f"{folder.path}: preprocessing is malformed ({error!r})") from None


def build_members(folder: FinalFolder) -> list[nn.Module]:
    """Every member network of the folder, weights loaded strictly, in eval mode."""
    document = folder.document()
    members = document.get("members") or [{"weights": folder.weights_name(0, 1), "arch": document["arch"]}]
    networks = []
    for member in members:
        arch = ArchConfig.from_dict(member["arch"], str(folder.arch_path))
        # weights=None would fall back to backbone.weights (a download): the folder's weights replace them
        network = build_model(
            arch.model_copy(update={"backbone": arch.backbone.model_copy(update={"weights": None})})
        )
        try:
            network.load_state_dict(folder.weights(member["weights"]), strict=True)
        except RuntimeError as error:
            raise NormsearchError(
                f"{folder.path}: {member['weights']} does not fit its ArchConfig "
                f"({str(error).splitlines()[0]})"
            ) from None
        networks.append(network.eval())
    return networks


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Preprocess]:
    """The finalized network of `path` (a `normsearch finalize` output) in eval mode on `device`, and its
    `preprocess` (module docstring). Usage::

        model, preprocess = normsearch.load_model("final/")
        probs = model(preprocess("photo.jpg")[None]).softmax(1)
        print(preprocess.classes[int(probs.argmax())])
    """
    folder = FinalFolder.open(path)
    preprocess = preprocess_of(folder)
    members = build_members(folder)
    model = members[0] if len(members) == 1 else SeedEnsemble(members)
    return model.to(device).eval(), preprocess
