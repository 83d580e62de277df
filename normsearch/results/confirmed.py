"""The numbers of re-seeded configurations (`normsearch confirm`): mean ± standard error per measure, and
the front re-drawn from confirmed means.

A confirmed configuration's numbers are the mean ± s.e. over its new seeds only. The search's own seed is
left out on purpose: a configuration was chosen *because* its one-seed number was high, so folding that
number in would bias the mean upward (the winner's curse). A pure pass over the run's records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from normsearch.metrics import (
    SELECT_PREFIX,
    SOURCE_PREFIX,
    SOURCE_VAL_ACC,
    TARGET_SELECT_ACC,
    WORST_SOURCE_VAL_ACC,
)
from normsearch.results.front import RunSummary
from normsearch.results.pareto import dominates, non_dominated
from normsearch.run.records import UNIT_SEPARATOR, TrialRecord


@dataclass(frozen=True)
class Stat:
    """Values over seeds: mean and standard error (sample std / sqrt(n); None for one value)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def se(self) -> float | None:
        if self.n < 2:
            return None
        var = sum((v - self.mean) ** 2 for v in self.values) / (self.n - 1)
        return math.sqrt(var / self.n)

    def text(self, pm: str = "±") -> str:
        return f"{self.mean:.1f}" if self.se is None else f"{self.mean:.1f} {pm} {self.se:.1f}"


def stat(values: Sequence[float]) -> Stat:
    return Stat(tuple(float(v) for v in values))


@dataclass
class Confirmed:
    """A search trial and its confirmation runs (complete ones in `runs`, failed ones in `failed`)."""

    trial: TrialRecord
    runs: list[TrialRecord] = field(default_factory=list)
    failed: list[TrialRecord] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [int(r.seed) for r in self.runs if r.seed is not None]

    def metric(self, name: str) -> Stat | None:
        values = [r.metrics[name] for r in self.runs if isinstance(r.metrics.get(name), int | float)]
        return stat(values) if values and len(values) == len(self.runs) else None

    def test(self, domain: str) -> Stat | None:
        values = [r.test[domain] for r in self.runs if domain in r.test]
        return stat(values) if values and len(values) == len(self.runs) else None


def confirmations(summary: RunSummary) -> dict[str, Confirmed]:
    """Search trial id -> its confirmation runs, for every search trial that has some (candidates only: a
    protocol unit's own runs are folded into the candidate's)."""
    trials = {t.trial_id: t for t in summary.candidates}
    out: dict[str, Confirmed] = {}
    for run in summary.folder.confirmations():
        if UNIT_SEPARATOR in run.trial_id or run.confirm_of not in trials:
            continue
        entry = out.setdefault(run.confirm_of, Confirmed(trials[run.confirm_of]))
        if run.complete:
            entry.runs.append(run)
        elif run.status == "failed":
            entry.failed.append(run)
    for entry in out.values():
        entry.runs.sort(key=lambda r: r.seed or 0)
    return out


@dataclass
class ConfirmedFront:
    """The front re-drawn from confirmed means: one point per confirmed configuration (its search trial id),
    the standard errors as error bars, the members, and a note for every configuration whose place on the
    front changed (on the search front and dominated now, or the reverse)."""

    objectives: dict[str, str]
    ids: list[str]
    means: list[tuple[float, ...]]
    errors: list[tuple[float, ...]]
    members: list[int]
    notes: list[str]


def confirmed_front(summary: RunSummary, confirmed: dict[str, Confirmed]) -> ConfirmedFront:
    """See ConfirmedFront. Only configurations with a confirmed mean of every objective take part; the
    search front they are compared with is the run's own (`summary.front`)."""
    objectives = summary.recipe.search.objectives
    directions = list(objectives.values())
    ids, means, errors = [], [], []
    for key, entry in confirmed.items():
        stats = [entry.metric(name) for name in objectives]
        if all(s is not None for s in stats):
            ids.append(key)
            means.append(tuple(s.mean for s in stats if s is not None))
            errors.append(tuple(s.se or 0.0 for s in stats if s is not None))
    members = non_dominated(means, directions)
    on_search = summary.front.member_ids()
    notes = []
    for i, key in enumerate(ids):
        was, now = key in on_search, i in members
        if was and not now:
            # A dominated point is dominated by some member (dominance is transitive).
            by = [j for j in members if dominates(means[j], means[i], directions)]
            notes.append(
                f"{key}: on the search front, dominated after confirmation by "
                f"{', '.join(ids[j] for j in by)} ({_point(objectives, means[i])} vs "
                f"{_point(objectives, means[by[0]])})"
            )
        elif now and not was:
            notes.append(
                f"{key}: dominated in the search, on the confirmed front ({_point(objectives, means[i])})"
            )
    return ConfirmedFront(objectives, ids, means, errors, members, notes)


def _point(objectives: dict[str, str], values: tuple[float, ...]) -> str:
    return ", ".join(f"{name} {v:.1f}" for name, v in zip(objectives, values, strict=True))


def confirmation_rows(
    summary: RunSummary, confirmed: dict[str, Confirmed]
) -> list[tuple[str, str, Stat, float | None]]:
    """(trial, measure, confirmed Stat, the search's value) for every confirmed configuration: source val,
    worst source, select target and each select domain, then every test accuracy."""
    rows = []
    for key, entry in confirmed.items():
        if not entry.runs:
            continue
        names = [SOURCE_VAL_ACC, WORST_SOURCE_VAL_ACC, TARGET_SELECT_ACC]
        names += sorted(k for k in entry.runs[0].metrics if k.startswith((SELECT_PREFIX, SOURCE_PREFIX)))
        for name in names:
            value = entry.metric(name)
            if value is not None:
                rows.append((key, name, value, _number(entry.trial.metrics.get(name))))
        for domain in entry.runs[0].test:
            value = entry.test(domain)
            if value is not None:
                rows.append((key, f"test: {domain}", value, _number(entry.trial.test.get(domain))))
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
