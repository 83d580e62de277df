"""Where a candidate's training starts (`train.init`), and pretraining the base once.

- ``scratch``: the network's random initialisation (today's default, bit for bit).
- ``weights``: `model.backbone.weights`, a torchvision weights name or a checkpoint file.
- ``pretrain``: pretrain once, fine-tune each candidate. `pretrain(...)` trains the recipe's base
  architecture on the sources (`train.pretrain_epochs` at `train.pretrain_lr`) and returns it as a
  normsearch checkpoint; each candidate then starts from it with `train_candidate(..., init=checkpoint)`
  (or from a file written earlier: `train.init_from`) and fine-tunes for `train.epochs`.

Any checkpoint goes through weight inheritance (`normsearch.models.inherit`), so a candidate whose plan
differs from the checkpoint's keeps what the checkpoint's BatchNorms learned; the returned description
(`TrainResult.extra["init"]`) says where training started and how many slots were inherited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normsearch.arch import ArchConfig, Backbone, NormPlan
from normsearch.errors import NormsearchError

if TYPE_CHECKING:
    from normsearch.data.domains import DomainSet
    from normsearch.data.protocol import Unit
    from normsearch.data.spec import DataConfig
    from normsearch.models.weights import Checkpoint
    from normsearch.train.loop import TrainConfig
    from normsearch.train.state import TrainResult, TrainState


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
    from normsearch.models import apply_weights, build_network, load_weights

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
    from normsearch.models.weights import Checkpoint

    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(weights, "trained", "normsearch", arch.to_dict(), {"started_from": started_from})


def pretrain(
    arch: ArchConfig,
    data: DomainSet,
    data_config: DataConfig,
    config: TrainConfig,
    seed: int = 0,
    report: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    snapshot: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    unit: Unit | None = None,
) -> TrainResult:
    """Train the recipe's base architecture `arch` once on the sources (of `unit`: a fold's base never
    sees the fold's held-out domain), for `train.init: pretrain`:
    `pretrain_epochs` at `pretrain_lr` (default: the candidates' epochs and lr), from `backbone.weights`
    if set, else from scratch. `result.checkpoint` is the pretrained base with its provenance (seed,
    budget, source domain, accuracies, versions); `save_checkpoint` writes it and
    `train_candidate(..., init=result.checkpoint)` starts a candidate from it. Resumable like any
    training (`snapshot`, `resume`)."""
    import torchvision

    from normsearch import __version__
    from normsearch.train.loop import train_candidate

    base = config.model_copy(
        update={
            "epochs": config.pretrain_epochs or config.epochs,
            "lr": config.pretrain_lr or config.lr,
            "init": None,
            "init_from": None,
        }
    )
    unit = unit or data_config.units()[0]
    result = train_candidate(
        arch,
        data,
        data_config,
        base,
        seed,
        report,
        threads,
        device,
        snapshot,
        resume,
        keep_weights=True,
        unit=unit,
    )
    assert result.checkpoint is not None  # keep_weights
    versions = {
        "normsearch": __version__,
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
    }
    provenance = {
        "kind": "pretrain",
        "seed": seed,
        "epochs": base.epochs,
        "lr": base.lr,
        "source_domains": list(unit.sources),
        "selection": data_config.selection,
        "source_val_acc": result.final["source_val_acc"],
        "target_select_acc": result.final.get("target_select_acc"),
        "started_from": result.extra["init"],
        "versions": versions,
    }
    result.checkpoint = dataclasses.replace(
        result.checkpoint, source="the run's pretrained base", provenance=provenance
    )
    return result
