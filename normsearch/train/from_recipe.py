"""The one door for training from a recipe: `train_from_recipe(recipe, arch, unit, ...)` trains `arch` the
way the recipe says (its data, `train:` section, seed and `resources.cpu` threads), on one unit of the data
protocol or on every unit combined. Diagnose, the SN warm start, pretraining, the search's trials, the
benches, the CLI's tools and the scripts all come through here, so a new training argument is added once.

`pretrain(recipe, unit, ...)` is `train.init: pretrain`'s first step: the recipe's base architecture,
trained once on the unit's sources at the pretraining budget, returned as a checkpoint with provenance.

The recipe is typed by the `TrainingRecipe` protocol, not imported: the recipe module imports
`TrainConfig` from this package, so the import points recipe -> train only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from normsearch import __version__
from normsearch.arch import ArchConfig
from normsearch.data.domains import DomainSet
from normsearch.data.protocol import Unit, combine_units
from normsearch.data.spec import DataConfig, group_means, load_data
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.models.weights import Checkpoint
from normsearch.train.config import TrainConfig
from normsearch.train.loop import train_candidate
from normsearch.train.state import TrainResult, TrainState


class _Resources(Protocol):
    @property
    def cpu(self) -> int: ...


class TrainingRecipe(Protocol):
    """What training reads from a recipe (`normsearch.recipe.Recipe` has all of it)."""

    @property
    def model(self) -> ArchConfig: ...
    @property
    def data(self) -> DataConfig: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def seed(self) -> int: ...
    @property
    def resources(self) -> _Resources: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


def train_from_recipe(
    recipe: TrainingRecipe,
    arch: ArchConfig,
    unit: Unit | None = None,
    *,
    seed: int | None = None,
    data: DomainSet | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    snapshot: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    init: Checkpoint | str | Path | dict[str, torch.Tensor] | None = None,
    keep_weights: bool = False,
    policies: list[str] | None = None,
) -> TrainResult:
    """Train `arch` under `recipe`: its data (`data`, when given, is the recipe's data already loaded), its
    `train:` section, `seed` (default: the recipe's) and `threads` (default: `resources.cpu`).

    With a `unit`, exactly `train_candidate` on that unit (`snapshot`, `resume`, `init`, `keep_weights` and
    `policies`, the test-time statistics the final epoch is also measured under, as there). Without one,
    every unit of the data protocol, combined as the search combines them (`train_units`); `report` then
    receives each unit's epochs with the unit's name under ``"unit"`` (a copy: the history is not
    changed). A protocol of one unit is the same as giving that unit."""
    data = data if data is not None else load_data(recipe.data)
    seed = recipe.seed if seed is None else seed
    threads = recipe.resources.cpu if threads is None else threads
    units = recipe.data.units()
    if unit is None and len(units) == 1:
        unit = units[0]
    if unit is not None:
        return train_candidate(
            arch,
            data,
            recipe.data,
            recipe.train,
            seed,
            report,
            threads,
            device,
            snapshot,
            resume,
            init,
            keep_weights,
            unit,
            policies,
        )
    if snapshot is not None or resume is not None or init is not None or keep_weights:
        raise ValueError("snapshot, resume, init and keep_weights train one unit: give `unit`")
    unit_report = (lambda name, m: report({**m, "unit": name})) if report is not None else None
    return train_units(arch, data, recipe.data, recipe.train, seed, unit_report, threads, device, policies)


def train_units(
    arch: ArchConfig,
    data: DomainSet,
    data_config: DataConfig,
    config: TrainConfig,
    seed: int = 0,
    report: Callable[[str, dict[str, Any]], None] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    policies: list[str] | None = None,
) -> TrainResult:
    """Train `arch` once per unit of the data protocol (data/protocol.py) and combine the units as the
    search does: mean metrics, and under rotation each held-out domain's accuracy with their average.
    `report(unit, metrics)` receives each unit's epochs. One unit: exactly `train_candidate`."""
    units = data_config.units()
    results = {}
    for unit in units:
        unit_report = (lambda m, u=unit.name: report(u, m)) if report is not None else None
        results[unit.name] = train_candidate(
            arch, data, data_config, config, seed, unit_report, threads, device, unit=unit, policies=policies
        )
    if len(units) == 1:
        return results[units[0].name]
    metrics, test = combine_units(
        units, {n: r.final for n, r in results.items()}, {n: r.test for n, r in results.items()}
    )
    first = results[units[0].name]
    groups = group_means({k: v for k, v in test.items() if k in data_config.targets}, data_config.dataset)
    return TrainResult(
        [{**metrics, "final": True, "converged": all(r.converged for r in results.values())}],
        test,
        groups,
        first.params,
        sum(r.seconds for r in results.values()),
        first.threads,
        {"units": {n: {"final": r.final, "test": r.test} for n, r in results.items()}},
    )


def pretrain(
    recipe: TrainingRecipe,
    unit: Unit | None = None,
    *,
    seed: int | None = None,
    data: DomainSet | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    snapshot: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """Train the recipe's base architecture (`recipe.model`) once on the sources of `unit` (default: the
    first; a fold's base never sees the fold's held-out domain), for `train.init: pretrain`:
    `pretrain_epochs` at `pretrain_lr` (default: the candidates' epochs and lr), from `backbone.weights`
    if set, else from scratch. `result.checkpoint` is the pretrained base with its provenance (seed,
    budget, source domain, accuracies, versions); `save_checkpoint` writes it and
    `train_candidate(..., init=result.checkpoint)` starts a candidate from it. Resumable like any
    training (`snapshot`, `resume`)."""
    config = recipe.train
    base = config.model_copy(
        update={
            "epochs": config.pretrain_epochs or config.epochs,
            "lr": config.pretrain_lr or config.lr,
            "init": None,
            "init_from": None,
        }
    )
    seed = recipe.seed if seed is None else seed
    unit = unit or recipe.data.units()[0]
    result = train_from_recipe(
        recipe.model_copy(update={"train": base}),
        recipe.model,
        unit,
        seed=seed,
        data=data,
        report=report,
        threads=threads,
        device=device,
        snapshot=snapshot,
        resume=resume,
        keep_weights=True,
    )
    assert result.checkpoint is not None  # keep_weights
    # Imported here, not at the top: a search's driver imports this module (its trials' function) but never
    # trains, and torchvision's import (torch._dynamo with it) costs it as much CPU as torch's own.
    import torchvision

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
        "selection": recipe.data.selection,
        SOURCE_VAL_ACC: result.final[SOURCE_VAL_ACC],
        TARGET_SELECT_ACC: result.final.get(TARGET_SELECT_ACC),
        "started_from": result.extra["init"],
        "versions": versions,
    }
    result.checkpoint = dataclasses.replace(
        result.checkpoint, source="the run's pretrained base", provenance=provenance
    )
    return result
