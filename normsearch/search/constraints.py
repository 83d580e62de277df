"""Constraints on a search: inequalities over a trial's recorded metrics, such as
``source_val_acc >= best - 1.0`` or ``params <= 200000``.

`best` is the best value of that metric among the trials finished so far (its direction from the name:
normsearch.metrics). Optuna's multi-objective samplers take
constraints as ``constraints_func(trial) -> [c_1, ...]`` with ``c_i <= 0`` feasible (NSGA-II: Deb et al.'s
constrained domination; TPE: c-TPE), so each constraint is stored here in that form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from normsearch.metrics import METRICS, SELECT_PREFIX, SOURCE_PREFIX, direction, is_metric

_FORM = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w/+@.\-]*)\s*(?P<op><=|>=)\s*"
    r"(?:(?P<best>best)\s*(?:(?P<sign>[-+])\s*(?P<offset>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))?"
    r"|(?P<value>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, the bound either a number or `best ± offset`."""

    text: str
    metric: str
    op: str  # "<=" or ">="
    value: float | None = None  # a fixed bound
    offset: float | None = None  # best + offset, when the bound is relative to the best so far

    def bound(self, best: float | None) -> float | None:
        """The bound now; None while a relative bound has no finished trial to be relative to."""
        if self.offset is None:
            return self.value
        return None if best is None else best + self.offset

    def violation(self, metrics: Mapping[str, float], best: float | None) -> float:
        """Optuna's form: <= 0 when satisfied, the amount it is missed by otherwise (inf without the
        metric: a trial that never measured it cannot be shown to satisfy it)."""
        bound = self.bound(best)
        if bound is None:
            return 0.0
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return math.inf
        return float(value) - bound if self.op == "<=" else bound - float(value)


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint; a ValueError names the forms allowed."""
    match = _FORM.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"constraint {text!r}: write METRIC >= NUMBER, METRIC <= NUMBER or METRIC >= best - NUMBER "
            "(e.g. 'source_val_acc >= best - 1.0', 'params <= 200000')"
        )
    metric = match["metric"]
    if not is_metric(metric):
        raise ValueError(
            f"constraint {text!r}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}, "
            f"{SELECT_PREFIX}<domain>, {SOURCE_PREFIX}<domain>"
        )
    if match["best"]:
        offset = float(match["offset"] or 0.0) * (-1.0 if match["sign"] == "-" else 1.0)
        return Constraint(text, metric, match["op"], offset=offset)
    return Constraint(text, metric, match["op"], value=float(match["value"]))


def maximised(metric: str) -> bool:
    """Whether `best` of this metric is its largest value (accuracies) or its smallest (size, loss), as
    normsearch.metrics says."""
    return direction(metric) == "max"


def best_values(
    constraints: Iterable[Constraint], finished: Iterable[Mapping[str, float]]
) -> dict[str, float]:
    """The best value of every metric a relative constraint names, over the finished trials' metrics."""
    rows = list(finished)
    best: dict[str, float] = {}
    for c in constraints:
        if c.offset is None:
            continue
        values = [float(r[c.metric]) for r in rows if r.get(c.metric) is not None]
        values = [v for v in values if math.isfinite(v)]
        if values:
            best[c.metric] = max(values) if maximised(c.metric) else min(values)
    return best


def violations(
    constraints: Iterable[Constraint], metrics: Mapping[str, float], best: Mapping[str, float]
) -> list[float]:
    """Every constraint's violation for one trial (Optuna's `constraints_func` values)."""
    return [c.violation(metrics, best.get(c.metric)) for c in constraints]
