"""One candidate's training, no Ray: the loop, its resumable state, initialisation (scratch, weights,
pretrain), evaluation and precision. Callers import from here; the modules behind it are implementation.
From a recipe, train through `train_from_recipe` (and `pretrain`): the one door that reads the recipe's
data, training section, seed and threads.

Only `TrainConfig` is imported eagerly (every recipe holds one); the rest loads on first use (PEP 562
`__getattr__`), so reading a run folder (`show`, `report`, `collect`: the recipe, never a model) does not
import torchvision, whose import (torch._dynamo with it) cost as much CPU as torch's own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from normsearch.train.config import TrainConfig

_LAZY = {
    "TrainingRecipe": "from_recipe",
    "pretrain": "from_recipe",
    "train_from_recipe": "from_recipe",
    "train_units": "from_recipe",
    "init_mode": "initialise",
    "predicted_logits": "evaluation",
    "EVAL_BATCH": "evaluation",
    "evaluation_split": "evaluation",
    "unit_sets": "evaluation",
    "final_accuracies": "evaluation",
    "correct_count": "evaluation",
    "percent": "evaluation",
    "autocast": "precision",
    "GiB": "probe",
    "CONTEXT_BYTES": "probe",
    "Probe": "probe",
    "check_fraction": "probe",
    "device_capacity": "probe",
    "probe_step_memory": "probe",
    "time_training": "timing",
    "_standardizer": "loop",
    "train_candidate": "loop",
    "Diverged": "state",
    "TrainResult": "state",
    "TrainState": "state",
    "converged": "state",
    "hardened_arch": "state",
    "retrain_summary": "state",
    "switch_to_hard": "state",
}

if TYPE_CHECKING:
    from normsearch.train.evaluation import (
        EVAL_BATCH,
        correct_count,
        evaluation_split,
        final_accuracies,
        percent,
        predicted_logits,
        unit_sets,
    )
    from normsearch.train.from_recipe import TrainingRecipe, pretrain, train_from_recipe, train_units
    from normsearch.train.initialise import init_mode
    from normsearch.train.loop import _standardizer, train_candidate
    from normsearch.train.precision import autocast
    from normsearch.train.probe import (
        CONTEXT_BYTES,
        GiB,
        Probe,
        check_fraction,
        device_capacity,
        probe_step_memory,
    )
    from normsearch.train.state import (
        Diverged,
        TrainResult,
        TrainState,
        converged,
        hardened_arch,
        retrain_summary,
        switch_to_hard,
    )
    from normsearch.train.timing import time_training


def __getattr__(name: str) -> Any:
    """The lazily imported names above (PEP 562): the module behind `name`, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = [
    "CONTEXT_BYTES",
    "EVAL_BATCH",
    "Diverged",
    "GiB",
    "Probe",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingRecipe",
    "_standardizer",
    "autocast",
    "check_fraction",
    "converged",
    "correct_count",
    "device_capacity",
    "evaluation_split",
    "final_accuracies",
    "hardened_arch",
    "init_mode",
    "percent",
    "predicted_logits",
    "pretrain",
    "probe_step_memory",
    "retrain_summary",
    "switch_to_hard",
    "time_training",
    "train_candidate",
    "train_from_recipe",
    "train_units",
    "unit_sets",
]
