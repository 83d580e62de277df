"""What training leaves behind: the resumable state after an epoch, the result of a run, divergence,
convergence, and the architecture a trained network's weights fit (soft Switchable Norm hardened).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC, TRAIN_ACC, WORST_SOURCE_VAL_ACC, label
from normsearch.norms.switchable import STATS, SwitchNorm2d

if TYPE_CHECKING:
    from normsearch.models.weights import Checkpoint

# benchmark-design §6b: a run whose source accuracy is below 98% while its training accuracy was still
# climbing (by more than a point in the last epoch) when the schedule ran out is "not converged": its target
# accuracy is not a domain-generalization result.
CONVERGED_SOURCE_ACC = 98.0
STILL_CLIMBING = 1.0


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
    if not history or history[-1][SOURCE_VAL_ACC] >= CONVERGED_SOURCE_ACC:
        return True
    if len(history) < 2:
        return False
    return history[-1][TRAIN_ACC] - history[-2][TRAIN_ACC] <= STILL_CLIMBING


def switch_to_hard(model: nn.Module) -> int:
    """Replace every soft SwitchNorm2d by its hard argmax layer (SN §4.1.4), keeping the affine parameters
    as the same Parameter objects so the optimizer's momentum carries over. Returns how many switched."""
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


def retrain_summary(results: list[TrainResult]) -> list[tuple[str, float, float, list[float]]]:
    """(measure, mean, standard error, per-seed values) for source val, select mean and every test-split
    accuracy of several seeds' runs."""
    measures: dict[str, list[float]] = {}
    for result in results:
        for key in (SOURCE_VAL_ACC, WORST_SOURCE_VAL_ACC, TARGET_SELECT_ACC):
            if key in result.final:
                measures.setdefault(label(key), []).append(result.final[key])
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
