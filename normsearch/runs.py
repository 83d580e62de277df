"""Reading a run folder back: trials from trials.jsonl, the Pareto front, picks and exports.

trials.jsonl is the record: one line per evaluation, appended as results arrive. A trial's state is its
last line. Only trials that reached their final epoch ("complete") enter the front; configurations that
occur more than once (a sampler may propose a point twice) collapse to one point, averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normsearch.errors import NormsearchError
from normsearch.pareto import hypervolume_2d, non_dominated, pick, worst_reference
from normsearch.recipe import Recipe


@dataclass
class TrialRecord:
    """A trial's latest state."""

    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    epoch: int | None = None
    node_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    nodes: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def key(self) -> str:
        """Identity of the configuration, for collapsing duplicates."""
        return json.dumps(self.arch if self.arch is not None else self.config, sort_keys=True)


def read_trials(run_dir: Path) -> list[TrialRecord]:
    """Every trial of a run, in the order they first appeared; a torn last line (a killed driver) is
    ignored."""
    path = run_dir / "trials.jsonl"
    if not path.is_file():
        raise NormsearchError(f"{run_dir}: no trials.jsonl (not a run folder, or nothing has run yet)")
    trials: dict[str, TrialRecord] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        tid = rec["trial_id"]
        old = trials.get(tid)
        if old is not None and old.complete and rec["status"] != "complete":
            continue  # a complete trial stays complete
        trial = TrialRecord(
            trial_id=tid,
            status=rec["status"],
            config=rec.get("config", {}),
            metrics=rec.get("metrics") or (old.metrics if old else {}),
            test=rec.get("test") or (old.test if old else {}),
            arch=rec.get("arch"),
            epoch=rec.get("epoch") if rec.get("epoch") is not None else (old.epoch if old else None),
            node_id=rec.get("node_id"),
            versions=rec.get("versions", {}),
            seed=rec.get("seed"),
            nodes=(old.nodes if old else set()) | ({rec["node_id"]} if rec.get("node_id") else set()),
        )
        trials[tid] = trial
    return list(trials.values())


@dataclass
class Front:
    """The Pareto front of a run's complete trials."""

    objectives: dict[str, str]
    points: list[tuple[float, ...]]  # one per distinct configuration
    trials: list[list[TrialRecord]]  # the trials behind each point
    members: list[int]  # indices of points on the front
    hypervolume: float | None
    reference: tuple[float, ...] | None

    def member_ids(self) -> set[str]:
        return {t.trial_id for i in self.members for t in self.trials[i]}


def compute_front(trials: list[TrialRecord], objectives: dict[str, str]) -> Front:
    """Collapse duplicate configurations (mean of their objectives) and find the non-dominated points."""
    groups: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        if trial.complete and all(name in trial.metrics for name in objectives):
            groups.setdefault(trial.key(), []).append(trial)
    points = [
        tuple(sum(float(t.metrics[m]) for t in group) / len(group) for m in objectives)
        for group in groups.values()
    ]
    directions = list(objectives.values())
    members = non_dominated(points, directions)
    hv = reference = None
    if len(objectives) == 2 and points:
        bounds = [(min(p[d] for p in points), max(p[d] for p in points)) for d in range(2)]
        reference = worst_reference(directions, bounds)
        hv = hypervolume_2d([points[i] for i in members], reference, directions)
    return Front(objectives, points, list(groups.values()), members, hv, reference)


def choose(front: Front, rule: str, max_source_drop: float | None = None) -> TrialRecord:
    """The trial a pick rule selects (among front members for `knee`, among all complete for the rest)."""
    names = list(front.objectives)
    if ("source_val_acc" not in names or "target_select_acc" not in names) and rule != "knee":
        raise NormsearchError(
            f"--pick {rule}: needs source_val_acc and target_select_acc among the objectives ({names})"
        )
    s = names.index("source_val_acc") if "source_val_acc" in names else 0
    t = names.index("target_select_acc") if "target_select_acc" in names else min(1, len(names) - 1)
    index = pick(front.points, list(front.objectives.values()), rule, s, t, max_source_drop)
    return front.trials[index][0]


def export(run_dir: Path, recipe: Recipe, trial: TrialRecord, rule: str | None) -> dict[str, Any]:
    """The exported document: the ArchConfig under `arch` plus provenance (run, trial, metrics, seed,
    selection protocol). `normsearch.build_model(path)` reads the `arch` section."""
    if trial.arch is None:
        raise NormsearchError(f"trial {trial.trial_id}: no architecture recorded")
    return {
        "arch": trial.arch,
        "provenance": {
            "run": str(run_dir),
            "recipe": recipe.name,
            "trial": trial.trial_id,
            "pick": rule,
            "status": trial.status,
            "seed": trial.seed,
            "config": trial.config,
            "metrics": {
                k: v for k, v in trial.metrics.items() if isinstance(v, int | float) and k != "final"
            },
            "selection": recipe.data.describe(),
            "versions": trial.versions,
        },
    }


def write_export(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def find_trial(trials: list[TrialRecord], trial_id: str) -> TrialRecord:
    for trial in trials:
        if trial.trial_id == trial_id or trial.trial_id.endswith(trial_id):
            return trial
    raise NormsearchError(f"--trial: no trial {trial_id!r}; trials: {', '.join(t.trial_id for t in trials)}")
