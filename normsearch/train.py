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
layout and device placement: `normsearch.precision`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.data.batches import AugmentConfig, Standardizer, accuracy, make_augment, train_batches
from normsearch.data.domains import DomainSet
from normsearch.data.spec import DataConfig, group_means
from normsearch.initialise import init_mode as init_mode
from normsearch.initialise import pretrain as pretrain  # the public door is normsearch.train.pretrain
from normsearch.initialise import starting_model, trained_checkpoint
from normsearch.precision import autocast, grad_scaler, layout, place, resolve_device

if TYPE_CHECKING:
    from normsearch.models.weights import Checkpoint

# benchmark-design §6b: a run whose source accuracy is below 98% while its training accuracy was still
# climbing (by more than a point in the last epoch) when the schedule ran out is "not converged": its target
# accuracy is not a domain-generalization result.
CONVERGED_SOURCE_ACC = 98.0
STILL_CLIMBING = 1.0
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


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the message says which and when ("NaN loss at epoch 3")."""


@dataclass
class TrainState:
    """Everything needed to continue training after `epoch` finished epochs, bit for bit."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    generators: dict[str, torch.Tensor]  # data order, CrossNorm policy and layers, the global torch RNG
    switched: int
    history: list[dict[str, Any]]
    scaler: dict[str, Any] | None = None  # fp16's GradScaler (scale, growth tracker)
    init: dict[str, Any] | None = None  # what training started from, reported again on resume

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


@dataclass
class TrainResult:
    """What one training run produced: per-epoch metrics, the last epoch's, and the test-domain accuracies."""

    history: list[dict[str, Any]]
    test: dict[str, float]
    groups: dict[str, float]
    params: int
    seconds: float
    threads: int
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # the trained weights, with `keep_weights=True`

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def converged(self) -> bool:
        return converged(self.history)


def converged(history: list[dict[str, Any]]) -> bool:
    """False when source val accuracy is below 98% and training accuracy still rose by more than a point
    in the last epoch (see CONVERGED_SOURCE_ACC)."""
    if not history or history[-1]["source_val_acc"] >= CONVERGED_SOURCE_ACC:
        return True
    if len(history) < 2:
        return False
    return history[-1]["train_acc"] - history[-2]["train_acc"] <= STILL_CLIMBING


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


def switch_to_hard(model: nn.Module) -> int:
    """Replace every soft SwitchNorm2d by its hard argmax layer (SN §4.1.4), keeping the affine parameters
    as the same Parameter objects so the optimizer's momentum carries over. Returns how many switched."""
    from normsearch.norms.switchable import SwitchNorm2d

    switched = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SwitchNorm2d) and child.mode == "soft":
                hard = child.to_hard()
                hard.weight, hard.bias = child.weight, child.bias
                setattr(parent, name, hard)
                switched += 1
    return switched


def _generators(model: nn.Module, data_order: torch.Generator, policy: Any) -> dict[str, torch.Generator]:
    """Every random generator training draws from, by a stable name: the data order, the CrossNorm policy,
    each layer that owns one (CrossNorm's box and partner draws); the global RNG (augmentation) apart."""
    found = {"data": data_order}
    if policy is not None:
        found["policy"] = policy.generator
    for name, module in model.named_modules():
        if isinstance(getattr(module, "generator", None), torch.Generator):
            found[f"module:{name}"] = module.generator
    return found


def hardened_arch(arch: ArchConfig, model_state: dict[str, Any]) -> ArchConfig:
    """The ArchConfig that a trained model's weights fit: when the plan switched Switchable Norm from soft
    to hard during training (`hard_at`), its hard choices (the one-hot ratio buffers in the state) become
    the rule's `choices`, so that a rebuilt network is hard where the trained one was."""
    from normsearch.norms.switchable import STATS

    rule = arch.norm.switchable
    if rule is None or rule.mode != "soft" or rule.hard_at is None:
        return arch
    choices = {}
    for slot, spec in arch.resolve().slots.items():
        mean, var = model_state.get(f"{slot}.mean_weight"), model_state.get(f"{slot}.var_weight")
        if spec.kind == "sn" and mean is not None and var is not None:
            choices[slot] = f"{STATS[int(mean.argmax())]}/{STATS[int(var.argmax())]}"
    hard = rule.model_copy(update={"mode": "hard", "hard_at": None, "choices": choices})
    return arch.model_copy(update={"norm": arch.norm.model_copy(update={"switchable": hard})})


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
) -> TrainResult:
    """Train `arch` on `data_config.source` and evaluate it; deterministic from `seed` on CPU at a fixed
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

    source = data[data_config.source]
    train_x, train_y = source.split("train")
    standardize = Standardizer.fit(train_x)
    if dev.type != "cpu":  # batches are sliced, augmented and standardised on the device
        standardize = Standardizer(place(standardize.mean, dev), place(standardize.std, dev))
    train_x, train_y = place(train_x, dev), place(train_y, dev)
    augment = make_augment(config.augment, train_x.shape[-1])

    def split(domain: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = data[domain].split(name)
        return place(images, dev), labels  # `accuracy` compares labels on the host

    source_val = split(data_config.source, "val")
    select = {name: split(name, "val") for name in data_config.select}
    generator = torch.Generator().manual_seed(seed)
    scaler = grad_scaler(dev, config.precision)

    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
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

    def evaluate() -> None:
        if policy:
            policy.off()
        if batch_average:
            batches = train_batches(train_x, train_y, config.batch_size, torch.Generator().manual_seed(seed))
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
        for x, y in train_batches(train_x, train_y, config.batch_size, generator, augment):
            if policy:
                policy.step()
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
            accs = {name: accuracy(model, x, y, standardize) for name, (x, y) in select.items()}
            source_acc = accuracy(model, *source_val, standardize)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": epoch_loss,
            "train_acc": 100.0 * int(correct) / seen,
            "source_val_acc": source_acc,
            "target_select_acc": sum(accs.values()) / len(accs),
            **{f"select/{name}": acc for name, acc in accs.items()},
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
                test["source"] = accuracy(model, *split(data_config.source, "test"), standardize)
                for name in data_config.targets:
                    test[name] = accuracy(model, *split(name, "test"), standardize)
            if data_config.test:
                test["test_mean"] = sum(test[n] for n in data_config.test) / len(data_config.test)
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
    groups = group_means({n: test[n] for n in data_config.targets}, data_config.dataset)
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


def retrain_summary(results: list[TrainResult]) -> list[tuple[str, float, float, list[float]]]:
    """(measure, mean, standard error, per-seed values) for source val, select mean and every test-split
    accuracy of several seeds' runs."""
    measures: dict[str, list[float]] = {}
    for result in results:
        measures.setdefault("source val", []).append(result.final["source_val_acc"])
        measures.setdefault("select target (val)", []).append(result.final["target_select_acc"])
        for name, value in result.test.items():
            measures.setdefault(f"test: {name}", []).append(value)
        for name, value in result.groups.items():
            measures.setdefault(f"group: {name}", []).append(value)
    rows = []
    for name, values in measures.items():
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        rows.append((name, mean, math.sqrt(var / len(values)), values))
    return rows
