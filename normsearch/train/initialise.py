"""Where a candidate's training starts (`train.init`), and pretraining the base once.

- ``scratch``: the network's random initialisation (today's default, bit for bit).
- ``weights``: `model.backbone.weights`, a torchvision weights name or a checkpoint file.
- ``pretrain``: pretrain once, fine-tune each candidate. `normsearch.train.pretrain` (in
  `train/from_recipe.py`, above the loop) trains the recipe's base architecture on the sources and returns
  it as a normsearch checkpoint; each candidate then starts from it with `train_candidate(..., init=...)`
  (or from a file written earlier: `train.init_from`) and fine-tunes for `train.epochs`.

Any checkpoint goes through weight inheritance (`normsearch.models.inherit`), so a candidate whose plan
differs from the checkpoint's keeps what the checkpoint's BatchNorms learned; the returned description
(`TrainResult.extra["init"]`) says where training started and how many slots were inherited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from normsearch.arch import ArchConfig, Backbone, NormPlan
from normsearch.errors import NormsearchError
from normsearch.models import apply_weights, build_network, load_weights
from normsearch.models.weights import Checkpoint
from normsearch.train.config import TrainConfig


def init_mode(arch: ArchConfig | Backbone, config: TrainConfig, given: bool = False) -> str:
    """Where training starts: `config.init`, or ``weights`` when `arch.backbone.weights` is set (or an
    init checkpoint is `given`), else ``scratch``. A contradiction (``scratch`` with weights, ``weights``
    without any, ``pretrain`` with neither a given checkpoint nor `init_from`) is one line."""
    weights = (arch.backbone if isinstance(arch, ArchConfig) else arch).weights
    mode = config.init or ("weights" if weights or given else "scratch")
    if mode == "scratch" and (weights or given):
        raise NormsearchError(
            "train.init: scratch, but there are weights to start from (model.backbone.weights "
            f"{weights!r}); remove them or set train.init: weights"
        )
    if mode == "weights" and not (weights or given):
        raise NormsearchError(
            "train.init: weights needs model.backbone.weights (a torchvision weights name such as "
            "IMAGENET1K_V1, or a checkpoint file)"
        )
    if mode == "pretrain" and not (given or config.init_from):
        raise NormsearchError(
            "train.init: pretrain fine-tunes from the run's pretrained base (`normsearch.train.pretrain`); "
            "to train one candidate on its own, give train.init_from: PATH (a checkpoint it wrote)"
        )
    return mode


def starting_model(
    plan: NormPlan,
    config: TrainConfig,
    init: Checkpoint | str | Path | dict[str, torch.Tensor] | None = None,
    resumed: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The network `plan` describes (resolved once by the caller), with the weights training starts from,
    and a description of them. `init` (a checkpoint, a file, a weights name, a state_dict) overrides
    `config.init`'s source. With `resumed` (a TrainState's description) nothing is loaded: the resumed
    state replaces the weights."""
    backbone = plan.need_backbone()
    model = build_network(plan)
    if resumed is not None:
        return model, resumed
    mode = init_mode(backbone, config, given=init is not None)
    if init is None:
        init = backbone.weights if mode == "weights" else config.init_from
    started_from: dict[str, Any] = {"init": mode}
    if init is not None:
        where = "train.init_from" if mode == "pretrain" else "backbone.weights"
        checkpoint = load_weights(init, backbone, where)
        inheritance = apply_weights(model, plan, checkpoint, config.sn_init)
        started_from.update(checkpoint.describe(), **inheritance.describe())
    return model, started_from


def trained_checkpoint(model: nn.Module, arch: ArchConfig, started_from: dict[str, Any]) -> Checkpoint:
    """The model's weights (copied to the CPU) as a normsearch checkpoint of `arch`."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(weights, "trained", "normsearch", arch.to_dict(), {"started_from": started_from})
