"""Train and evaluate one candidate network, independent of Ray.

`train_candidate(arch, data, config, seed, report=...)` builds the network from its ArchConfig (through the
NormPlan, like every other path), trains it on the source domain's train split and, after every epoch,
evaluates the source val split and every *select* domain's val split and passes one metrics dict to
`report`. The *test* domains are evaluated once, after the last epoch, and kept apart from the per-epoch
metrics so that nothing the search sees depends on them.

The plan's training hooks are honoured here: the CrossNorm activation policy runs every iteration (CNSN
§3.2); SwitchNorm slots switch from soft to hard (their argmax) at `hard_at` of training (SN §4.1.4); BN
statistics are re-estimated by batch average before evaluation when the plan asks (SN §3 "Inference").

Training is resumable: after every epoch `snapshot` receives a `TrainState` (weights, optimizer, schedule,
every random generator, the history, fp16's GradScaler), and `train_candidate(..., resume=state)` continues
from it with the same numbers an uninterrupted run would give. A non-finite loss ends training with
`Diverged`. The loop never waits on the device inside an epoch: losses and counts accumulate as tensors and
are read once per epoch.

Where training starts (`train.init`): ``scratch`` (random initialisation), ``weights`` (`backbone.weights`:
a torchvision weights name or a checkpoint file), or ``pretrain``: `pretrain(...)` trains the recipe's base
architecture once on the sources, and every candidate fine-tunes from that checkpoint
(`train_candidate(..., init=checkpoint)`). Either way the checkpoint goes through weight inheritance
(`normsearch.models.inherit`), and `TrainResult.extra["init"]` says what the run started from. Precision,
layout and device placement: `normsearch.train.precision`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.data.domains import DomainSet
from normsearch.data.pipeline import (
    AugmentConfig,
    Standardizer,
    balanced_batches,
    make_augment,
)
from normsearch.data.protocol import Unit
from normsearch.data.spec import DataConfig, group_means
from normsearch.data.stream import DevicePlacer, cache_budget, epoch_batches
from normsearch.norms.sparse_switchable import set_sparse_progress
from normsearch.train.evaluation import UnitSets, epoch_metrics, final_accuracies, unit_sets
from normsearch.train.initialise import starting_model, trained_checkpoint
from normsearch.train.precision import autocast, grad_scaler, layout, place, resolve_device
from normsearch.train.state import Diverged, TrainResult, TrainState, _generators, converged, switch_to_hard

if TYPE_CHECKING:
    from normsearch.models.weights import Checkpoint

RECALIBRATION_BATCHES = 20


class TrainConfig(BaseModel):
    """How one candidate is trained (defaults: benchmark-design §8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    # Where training starts; None: `weights` when backbone.weights is set, else `scratch`.
    init: Literal["scratch", "weights", "pretrain"] | None = None
    init_from: str | None = None  # init: pretrain: a checkpoint from `pretrain` instead of pretraining
    pretrain_epochs: int | None = Field(default=None, ge=1)  # the base's pretraining budget (None: epochs)
    pretrain_lr: float | None = Field(default=None, gt=0)  # (None: lr)
    sn_init: Literal["equal", "bn"] = "equal"  # inherited SwitchNorm ratios: equal, or toward BN
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = True

    @model_validator(mode="after")
    def _init_from_is_for_pretrain(self) -> TrainConfig:
        if self.init_from is not None and self.init != "pretrain":
            raise ValueError(
                "init_from is the pretrained checkpoint of init: pretrain; to start from a file with "
                "init: weights, give it as model.backbone.weights"
            )
        return self


def _lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return factor


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _standardizer(arch: ArchConfig, data_config: DataConfig, sets: UnitSets) -> Standardizer:
    """The input standardisation: the sources' own statistics, or ImageNet's for a pretrained backbone
    (`data.normalize: auto` picks ImageNet's when `backbone.weights` is set)."""
    rule = data_config.normalize
    if rule == "imagenet" or (rule == "auto" and arch.backbone.weights):
        return Standardizer.imagenet()
    return Standardizer.fit(sets.train_images())


def train_candidate(
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
    init: Checkpoint | str | Path | dict[str, torch.Tensor] | None = None,
    keep_weights: bool = False,
    unit: Unit | None = None,
) -> TrainResult:
    """Train `arch` on one unit of the data protocol (default: the recipe's only one; `data_config.units()`)
    and evaluate it (normsearch.train.evaluation); deterministic from `seed` on CPU at a fixed
    thread count. `report` receives one metrics dict per epoch (``final`` is True on the last); `snapshot`,
    called just before it, the state to continue from. With `resume`, the finished epochs are not trained
    again (a state whose last epoch is the final one only reports it again). `init` (a checkpoint, a file,
    a weights name or a state_dict) is where training starts, with weight inheritance; without it,
    `config.init` decides (see `init_mode`). `keep_weights` returns the trained weights as
    `result.checkpoint`. Raises `Diverged` on a NaN or infinite training loss."""
    from normsearch.norms.crossnorm import CrossNormPolicy
    from normsearch.norms.running import recalibrate_bn

    started = time.perf_counter()
    dev = resolve_device(device, config.cudnn_benchmark)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    num_classes = data.num_classes
    if arch.backbone.num_classes != num_classes:
        arch = arch.model_copy(
            update={"backbone": arch.backbone.model_copy(update={"num_classes": num_classes})}
        )
    plan = arch.resolve()
    # On resume the state's weights already hold what inheritance gave: nothing is loaded again.
    model, started_from = starting_model(arch, config, init, resume.init if resume else None)
    model = model.to(dev, memory_format=torch.channels_last) if config.channels_last else model.to(dev)
    params = sum(p.numel() for p in model.parameters())

    unit = unit or data_config.units()[0]
    # Resident on the device within the budget; a domain over it streams (normsearch.data.stream).
    sets = unit_sets(data, unit, DevicePlacer(dev, cache_budget(dev, data_config.device_cache_gb)))
    standardize = _standardizer(arch, data_config, sets)
    if dev.type != "cpu":  # batches are sliced, augmented and standardised on the device
        standardize = Standardizer(place(standardize.mean, dev), place(standardize.std, dev))
    train_parts = list(sets.train.values())
    augment = make_augment(config.augment, train_parts[0][0].shape[-1], dev)
    n_train = sum(len(y) for _, y in train_parts)
    generator = torch.Generator().manual_seed(seed)
    scaler = grad_scaler(dev, config.precision)

    steps_per_epoch = math.ceil(n_train / config.batch_size)
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    policy = (
        CrossNormPolicy(model, plan.crossnorm.p, plan.crossnorm.active_num, seed) if plan.crossnorm else None
    )
    hard_epoch = None
    if plan.switchable and plan.switchable.hard_at is not None:
        hard_epoch = min(config.epochs - 1, math.ceil(plan.switchable.hard_at * config.epochs))
    batch_average = bool(plan.switchable and plan.switchable.batch_average)
    sparse = set_sparse_progress(model, 0.0) > 0

    def evaluate() -> None:
        if policy:
            policy.off()
        if batch_average:
            batches = balanced_batches(train_parts, config.batch_size, torch.Generator().manual_seed(seed))
            with autocast(dev, config.precision):
                recalibrate_bn(model, ((standardize(x).to(dev),) for x, _ in batches), RECALIBRATION_BATCHES)
        model.eval()

    history: list[dict[str, Any]] = []
    switched = 0
    start = 0
    if resume is not None:
        if resume.switched:
            switched = switch_to_hard(model)
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        if scaler is not None and resume.scaler is not None:
            scaler.load_state_dict(resume.scaler)
        generators = _generators(model, generator, policy)
        for name, state in resume.generators.items():
            if name == "global":
                torch.set_rng_state(state)
            else:
                generators[name].set_state(state)
        history = [dict(h) for h in resume.history]
        start = resume.epoch
        if start >= config.epochs and report is not None:
            report(history[-1])
    for epoch in range(start, config.epochs):
        if hard_epoch is not None and epoch == hard_epoch:
            switched = switch_to_hard(model)
        model.train()
        tic = time.perf_counter()
        seen = 0
        # Accumulated on the device and read once per epoch: a `.item()` per step would stall a GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        batches = epoch_batches(train_parts, config.batch_size, generator, augment, dev)
        for step, (x, y) in enumerate(batches):
            if policy:
                policy.step()
            if sparse:  # Sparse SN anneals its radius over training (SSN §3.3)
                set_sparse_progress(
                    model, (epoch * steps_per_epoch + step) / (config.epochs * steps_per_epoch)
                )
            x, y = standardize(x).to(dev, memory_format=layout(config.channels_last)), y.to(dev)
            with autocast(dev, config.precision):
                logits = model(x)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # fp16: scaled loss, unscaled gradients checked for inf before the step
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            schedule.step()
            seen += len(y)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
        train_seconds = time.perf_counter() - tic
        epoch_loss = float(loss_sum) / seen
        if not math.isfinite(epoch_loss):
            raise Diverged(f"{'NaN' if math.isnan(epoch_loss) else 'infinite'} loss at epoch {epoch + 1}")
        evaluate()
        with autocast(dev, config.precision):
            measured = epoch_metrics(model, sets, standardize)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": epoch_loss,
            "train_acc": 100.0 * int(correct) / seen,
            **measured,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_seconds,
            "epoch_seconds": time.perf_counter() - tic,
            "params": params,
            "final": epoch + 1 == config.epochs,
        }
        metrics["converged"] = converged([*history, metrics])
        test: dict[str, float] = {}
        if metrics["final"]:
            # Once, after training: the source's and every target's test split, kept apart from what
            # selection saw (the search's objectives never read these).
            with autocast(dev, config.precision):
                test = final_accuracies(model, data, unit, standardize, lambda t: place(t, dev))
            metrics["test"] = test
        history.append(metrics)
        if snapshot is not None:
            states = {n: g.get_state() for n, g in _generators(model, generator, policy).items()}
            # Copies, not views: the caller may keep the state while training goes on.
            snapshot(
                TrainState(
                    epoch + 1,
                    copy.deepcopy(model.state_dict()),
                    copy.deepcopy(optimizer.state_dict()),
                    schedule.state_dict(),
                    {**states, "global": torch.get_rng_state()},
                    switched,
                    copy.deepcopy(history),
                    scaler.state_dict() if scaler is not None else None,
                    copy.deepcopy(started_from),
                )
            )
        if report is not None:
            report(metrics)

    test = history[-1]["test"]
    groups = group_means({n: test[n] for n in unit.targets}, data_config.dataset)
    return TrainResult(
        history,
        test,
        groups,
        params,
        time.perf_counter() - started,
        torch.get_num_threads(),
        {"switched_to_hard": switched, "init": started_from},
        trained_checkpoint(model, arch, started_from) if keep_weights else None,
    )


def train_units(
    arch: ArchConfig,
    data: DomainSet,
    data_config: DataConfig,
    config: TrainConfig,
    seed: int = 0,
    report: Callable[[str, dict[str, Any]], None] | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train `arch` once per unit of the data protocol (data/protocol.py) and combine the units as the
    search does: mean metrics, and under rotation each held-out domain's accuracy with their average.
    `report(unit, metrics)` receives each unit's epochs. One unit: exactly `train_candidate`."""
    from normsearch.data.protocol import combine_units

    units = data_config.units()
    results = {}
    for unit in units:
        unit_report = (lambda m, u=unit.name: report(u, m)) if report is not None else None
        results[unit.name] = train_candidate(
            arch, data, data_config, config, seed, unit_report, threads, device, unit=unit
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
