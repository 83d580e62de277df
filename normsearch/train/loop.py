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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.data.domains import DomainSet
from normsearch.data.pipeline import (
    Standardizer,
    balanced_batches,
    domain_labels,
    make_augment,
)
from normsearch.data.protocol import Unit
from normsearch.data.spec import DataConfig, group_means
from normsearch.data.stream import DevicePlacer, cache_budget, epoch_batches
from normsearch.metrics import LOSS, PARAMS, POLICIES, TRAIN_ACC
from normsearch.norms.crossnorm import CrossNormPolicy
from normsearch.norms.domains import routed_layers, set_domains
from normsearch.norms.running import StatsPolicy, recalibrate_bn
from normsearch.norms.sparse_switchable import set_sparse_progress
from normsearch.train.config import TrainConfig
from normsearch.train.evaluation import UnitSets, epoch_metrics, final_accuracies, policy_results, unit_sets
from normsearch.train.initialise import starting_model, trained_checkpoint
from normsearch.train.precision import autocast, grad_scaler, layout, place, resolve_device
from normsearch.train.state import Diverged, TrainResult, TrainState, _generators, converged, switch_to_hard

if TYPE_CHECKING:
    from normsearch.arch.plan import NormPlan
    from normsearch.models.weights import Checkpoint

RECALIBRATION_BATCHES = 20


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


@dataclass
class _Run:
    """What one training run sets up before its first epoch (see `_set_up`), shared by the epoch steps."""

    dev: torch.device
    config: TrainConfig
    seed: int
    model: nn.Module
    started_from: dict[str, Any]
    params: int
    sets: UnitSets
    standardize: Standardizer
    train_parts: list[tuple[torch.Tensor, torch.Tensor]]
    augment: Any
    generator: torch.Generator
    scaler: Any
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    loss_fn: nn.Module
    policy: CrossNormPolicy | None
    hard_epoch: int | None
    batch_average: bool
    sparse: bool
    routed: bool  # DSON / cross-domain MixStyle: the layers read the batch's source-domain labels
    inference: str  # the plan's test-time statistics policy (norms.running)
    policies: list[str]  # the other policies the final epoch is also measured under (train_candidate)
    history: list[dict[str, Any]] = field(default_factory=list)
    switched: int = 0


def _with_classes(arch: ArchConfig, num_classes: int) -> ArchConfig:
    """`arch` with the data's number of classes as its head (a recipe need not repeat it)."""
    if arch.backbone.num_classes == num_classes:
        return arch
    return arch.model_copy(update={"backbone": arch.backbone.model_copy(update={"num_classes": num_classes})})


def _hard_epoch(plan: NormPlan, config: TrainConfig) -> int | None:
    """The epoch at which SwitchNorm slots switch to their argmax (SN §4.1.4), None when they never do."""
    if plan.switchable and plan.switchable.hard_at is not None:
        return min(config.epochs - 1, math.ceil(plan.switchable.hard_at * config.epochs))
    return None


def _set_up(
    arch: ArchConfig,
    data: DomainSet,
    data_config: DataConfig,
    config: TrainConfig,
    seed: int,
    dev: torch.device,
    init: Checkpoint | str | Path | dict[str, torch.Tensor] | None,
    resume: TrainState | None,
    unit: Unit,
) -> _Run:
    """The model with its starting weights, the unit's data on the device, optimizer, schedule and the
    plan's hooks. The order of the random draws here is part of the determinism contract: do not reorder."""
    torch.manual_seed(seed)
    plan = arch.resolve()
    # On resume the state's weights already hold what inheritance gave: nothing is loaded again.
    model, started_from = starting_model(plan, config, init, resume.init if resume else None)
    model = model.to(dev, memory_format=torch.channels_last) if config.channels_last else model.to(dev)
    params = sum(p.numel() for p in model.parameters())
    # Resident on the device within the budget; a domain over it streams (normsearch.data.stream).
    sets = unit_sets(data, unit, DevicePlacer(dev, cache_budget(dev, data_config.device_cache_gb)))
    standardize = _standardizer(arch, data_config, sets)
    if dev.type != "cpu":  # batches are sliced, augmented and standardised on the device
        standardize = Standardizer(place(standardize.mean, dev), place(standardize.std, dev))
    train_parts = list(sets.train.values())
    n_train = sum(len(y) for _, y in train_parts)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    optimizer = _optimizer(model, config)
    return _Run(
        dev=dev,
        config=config,
        seed=seed,
        model=model,
        started_from=started_from,
        params=params,
        sets=sets,
        standardize=standardize,
        train_parts=train_parts,
        augment=make_augment(config.augment, train_parts[0][0].shape[-1], dev),
        generator=torch.Generator().manual_seed(seed),
        scaler=grad_scaler(dev, config.precision),
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        schedule=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, steps_per_epoch)),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        policy=(
            CrossNormPolicy(model, plan.crossnorm.p, plan.crossnorm.active_num, seed)
            if plan.crossnorm
            else None
        ),
        hard_epoch=_hard_epoch(plan, config),
        batch_average=bool(plan.switchable and plan.switchable.batch_average),
        sparse=set_sparse_progress(model, 0.0) > 0,
        routed=routed_layers(model, len(train_parts)),
        inference=plan.inference,
        policies=[],
    )


def _restore(run: _Run, resume: TrainState) -> None:
    """Continue from `resume`: weights, optimizer, schedule, scaler, every random generator, the history."""
    if resume.switched:
        run.switched = switch_to_hard(run.model)
    run.model.load_state_dict(resume.model)
    run.optimizer.load_state_dict(resume.optimizer)
    run.schedule.load_state_dict(resume.schedule)
    if run.scaler is not None and resume.scaler is not None:
        run.scaler.load_state_dict(resume.scaler)
    generators = _generators(run.model, run.generator, run.policy)
    for name, state in resume.generators.items():
        if name == "global":
            torch.set_rng_state(state)
        else:
            generators[name].set_state(state)
    run.history = [dict(h) for h in resume.history]


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch; returns its loss and logits (still on the device)."""
    config = run.config
    x, y = run.standardize(x).to(run.dev, memory_format=layout(config.channels_last)), y.to(run.dev)
    with autocast(run.dev, config.precision):
        logits = run.model(x)
        loss = run.loss_fn(logits, y)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        loss.backward()
        run.optimizer.step()
    else:  # fp16: scaled loss, unscaled gradients checked for inf before the step
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.schedule.step()
    return loss, logits


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float, int]:
    """Train one epoch; returns its mean loss, training accuracy and number of images. Raises `Diverged`
    on a non-finite loss."""
    config, dev = run.config, run.dev
    if run.hard_epoch is not None and epoch == run.hard_epoch:
        run.switched = switch_to_hard(run.model)
    run.model.train()
    seen = 0
    # Accumulated on the device and read once per epoch: a `.item()` per step would stall a GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    total_steps = config.epochs * run.steps_per_epoch
    batches = epoch_batches(run.train_parts, config.batch_size, run.generator, run.augment, dev)
    for step, (x, y) in enumerate(batches):
        if run.policy:
            run.policy.step()
        if run.routed:
            set_domains(run.model, domain_labels(len(y), len(run.train_parts)).to(run.dev))
        if run.sparse:  # Sparse SN anneals its radius over training (SSN §3.3)
            set_sparse_progress(run.model, (epoch * run.steps_per_epoch + step) / total_steps)
        loss, logits = _step(run, x, y)
        seen += len(y)
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
    epoch_loss = float(loss_sum) / seen
    if not math.isfinite(epoch_loss):
        raise Diverged(f"{'NaN' if math.isnan(epoch_loss) else 'infinite'} loss at epoch {epoch + 1}")
    return epoch_loss, 100.0 * int(correct) / seen, seen


def _prepare_evaluation(run: _Run) -> None:
    """Before evaluating: CrossNorm off, BN statistics re-estimated by batch average when the plan asks
    (SN §3 "Inference"), eval mode."""
    if run.policy:
        run.policy.off()
    if run.batch_average:
        order = torch.Generator().manual_seed(run.seed)
        batches = balanced_batches(run.train_parts, run.config.batch_size, order)
        with autocast(run.dev, run.config.precision):
            recalibrate_bn(
                run.model, ((run.standardize(x).to(run.dev),) for x, _ in batches), RECALIBRATION_BATCHES
            )
    run.model.eval()


def _snapshot(run: _Run, epoch: int) -> TrainState:
    """The state after `epoch` finished epochs. Copies, not views: the caller may keep the state while
    training goes on."""
    states = {n: g.get_state() for n, g in _generators(run.model, run.generator, run.policy).items()}
    return TrainState(
        epoch,
        copy.deepcopy(run.model.state_dict()),
        copy.deepcopy(run.optimizer.state_dict()),
        run.schedule.state_dict(),
        {**states, "global": torch.get_rng_state()},
        run.switched,
        copy.deepcopy(run.history),
        run.scaler.state_dict() if run.scaler is not None else None,
        copy.deepcopy(run.started_from),
    )


def _run_epoch(run: _Run, epoch: int, data: DomainSet, unit: Unit) -> dict[str, Any]:
    """Train and evaluate one epoch; returns its metrics dict (appended to the history)."""
    tic = time.perf_counter()
    epoch_loss, train_acc, seen = _train_epoch(run, epoch)
    train_seconds = time.perf_counter() - tic
    _prepare_evaluation(run)
    with autocast(run.dev, run.config.precision):
        measured = epoch_metrics(run.model, run.sets, run.standardize, run.inference)
    metrics: dict[str, Any] = {
        "epoch": epoch + 1,
        LOSS: epoch_loss,
        TRAIN_ACC: train_acc,
        **measured,
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": seen / train_seconds,
        "epoch_seconds": time.perf_counter() - tic,
        PARAMS: run.params,
        "final": epoch + 1 == run.config.epochs,
    }
    metrics["converged"] = converged([*run.history, metrics])
    if metrics["final"] and run.policies:  # the same trained weights under the space's other policies
        with autocast(run.dev, run.config.precision):
            metrics[POLICIES] = policy_results(run.model, run.sets, data, unit, run.standardize, run.policies)
    if metrics["final"]:
        # Once, after training: the source's and every target's test split, kept apart from what
        # selection saw (the search's objectives never read these).
        with autocast(run.dev, run.config.precision):
            metrics["test"] = final_accuracies(run.model, data, unit, run.standardize, run.inference)
    run.history.append(metrics)
    return metrics


def _policies(policies: list[str] | None, own: str) -> list[str]:
    """The policies to measure the final epoch under besides the network's own, in the given order."""
    parsed = [str(StatsPolicy.parse(p)) for p in policies or []]
    return [p for p in dict.fromkeys(parsed) if p != own]


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
    policies: list[str] | None = None,
) -> TrainResult:
    """Train `arch` on one unit of the data protocol (default: the recipe's only one; `data_config.units()`)
    and evaluate it (normsearch.train.evaluation); deterministic from `seed` on CPU at a fixed
    thread count. `report` receives one metrics dict per epoch (``final`` is True on the last); `snapshot`,
    called just before it, the state to continue from. With `resume`, the finished epochs are not trained
    again (a state whose last epoch is the final one only reports it again). `init` (a checkpoint, a file,
    a weights name or a state_dict) is where training starts, with weight inheritance; without it,
    `config.init` decides (see `init_mode`). `keep_weights` returns the trained weights as
    `result.checkpoint`. Raises `Diverged` on a NaN or infinite training loss. From a recipe, call
    `normsearch.train.train_from_recipe` instead (it fills seed, threads and data from the recipe).
    `policies` (a space's test-time statistics policies): after the last epoch the same weights are also
    measured under each one but the network's own (`arch.norm.inference`, what every epoch and ``test``
    report), and the final metrics dict carries them under ``policies`` ({policy: {"metrics", "test"}};
    `evaluation.policy_results`)."""
    started = time.perf_counter()
    dev = resolve_device(device, config.cudnn_benchmark)
    if threads is not None:
        torch.set_num_threads(threads)
    arch = _with_classes(arch, data.num_classes)
    unit = unit or data_config.units()[0]
    run = _set_up(arch, data, data_config, config, seed, dev, init, resume, unit)
    run.policies = _policies(policies, run.inference)
    start = 0
    if resume is not None:
        _restore(run, resume)
        start = resume.epoch
        if start >= config.epochs and report is not None:
            report(run.history[-1])
    for epoch in range(start, config.epochs):
        metrics = _run_epoch(run, epoch, data, unit)
        if snapshot is not None:
            snapshot(_snapshot(run, epoch + 1))
        if report is not None:
            report(metrics)

    test = run.history[-1]["test"]
    groups = group_means({n: test[n] for n in unit.targets}, data_config.dataset)
    return TrainResult(
        run.history,
        test,
        groups,
        run.params,
        time.perf_counter() - started,
        torch.get_num_threads(),
        {"switched_to_hard": run.switched, "init": run.started_from},
        trained_checkpoint(run.model, arch, run.started_from) if keep_weights else None,
    )
