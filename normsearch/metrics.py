"""The one list of the metric names a trial reports: name, direction, label and format.

A leaf: it imports nothing of the package, so every layer (train, recipe, run, search, results, cli) may use
it. Code names a metric through the constants here (`SOURCE_VAL_ACC`, ...), never as a quoted literal, so a
renamed or added metric is one edit. Per-domain accuracies are `select/<domain>` and `source/<domain>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SOURCE_VAL_ACC = "source_val_acc"
WORST_SOURCE_VAL_ACC = "worst_source_val_acc"
TARGET_SELECT_ACC = "target_select_acc"
PARAMS = "params"
LOSS = "loss"
TRAIN_ACC = "train_acc"

Direction = Literal["max", "min"]

# The final result's per-policy numbers: {policy: {"metrics": per-epoch metrics, "test": test accuracies}}
# for a network evaluated under several test-time statistics policies (a space's `policies`), each but its
# own (`norm.inference`), whose numbers are the result's own.
POLICIES = "policies"

SELECT_PREFIX = "select/"
SOURCE_PREFIX = "source/"


@dataclass(frozen=True)
class Metric:
    """One metric: its result key, whether larger is better (`max`), how a table labels and formats it."""

    name: str
    direction: Direction
    label: str
    format: str  # a format spec: f"{value:{metric.format}}"

    def show(self, value: float | None) -> str:
        """`value` as tables print it ("" when missing)."""
        return "" if value is None else f"{value:{self.format}}"


ALL: tuple[Metric, ...] = (
    Metric(SOURCE_VAL_ACC, "max", "source val", ".1f"),
    Metric(WORST_SOURCE_VAL_ACC, "max", "worst source (val)", ".1f"),
    Metric(TARGET_SELECT_ACC, "max", "select target (val)", ".1f"),
    Metric(PARAMS, "min", "parameters", ",.0f"),
    Metric(LOSS, "min", "training loss", ".4f"),
    Metric(TRAIN_ACC, "max", "training accuracy", ".1f"),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL}
# name -> direction, the shape objectives are written in (`search.objectives`).
METRICS: dict[str, str] = {m.name: m.direction for m in ALL}
# The objectives when the recipe names none: source vs select target; and, under training-domain
# validation (no target is selected on), mean vs worst source.
DEFAULT_OBJECTIVES: dict[str, Direction] = {SOURCE_VAL_ACC: "max", TARGET_SELECT_ACC: "max"}
SOURCE_ONLY_OBJECTIVES: dict[str, Direction] = {SOURCE_VAL_ACC: "max", WORST_SOURCE_VAL_ACC: "max"}
# Reported alongside the metrics, never objectives.
INFO_KEYS = ("epoch", "lr", "images_per_s", "epoch_seconds", "final", "converged", "worker", "device")
RESULT_KEYS = frozenset({*METRICS, *INFO_KEYS})


def is_metric(name: str) -> bool:
    """Whether `name` is something a trial reports that can be an objective."""
    return name in METRICS or name.startswith((SELECT_PREFIX, SOURCE_PREFIX))


def direction(name: str) -> str:
    """`max` or `min` for `name` (per-domain accuracies are maximised)."""
    return METRICS.get(name, "max")


def label(name: str) -> str:
    """How a table heads `name` (the name itself for a per-domain accuracy)."""
    return BY_NAME[name].label if name in BY_NAME else name


def show(name: str, value: float | None) -> str:
    """`value` of metric `name` as tables print it (per-domain accuracies like accuracies: one decimal)."""
    return BY_NAME.get(name, BY_NAME[SOURCE_VAL_ACC]).show(value)
