"""One candidate's training, no Ray: the loop, its resumable state, initialisation (scratch, weights,
pretrain), evaluation and precision. Callers import from here; the modules behind it are implementation.
From a recipe, train through `train_from_recipe` (and `pretrain`): the one door that reads the recipe's
data, training section, seed and threads."""

from normsearch.train.config import TrainConfig
from normsearch.train.from_recipe import TrainingRecipe, pretrain, train_from_recipe, train_units
from normsearch.train.initialise import init_mode
from normsearch.train.loop import _standardizer, train_candidate
from normsearch.train.state import (
    Diverged,
    TrainResult,
    TrainState,
    converged,
    hardened_arch,
    retrain_summary,
    switch_to_hard,
)

__all__ = [
    "Diverged",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingRecipe",
    "_standardizer",
    "converged",
    "hardened_arch",
    "init_mode",
    "pretrain",
    "retrain_summary",
    "switch_to_hard",
    "train_candidate",
    "train_from_recipe",
    "train_units",
]
