"""One candidate's training, no Ray: the loop, its resumable state, initialisation (scratch, weights,
pretrain), evaluation and precision. Callers import from here; the modules behind it are implementation."""

from normsearch.train.initialise import init_mode, pretrain
from normsearch.train.loop import (
    Diverged,
    TrainConfig,
    _standardizer,
    train_candidate,
    train_units,
)
from normsearch.train.state import (
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
    "_standardizer",
    "converged",
    "hardened_arch",
    "init_mode",
    "pretrain",
    "retrain_summary",
    "switch_to_hard",
    "train_candidate",
    "train_units",
]
