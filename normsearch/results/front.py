"""The Pareto front of a run's records, the pick rules, and the exported document.

Only trials that reached their final epoch ("complete") enter the front; configurations that occur more than
once collapse to one point, averaged; repeats (configurations not trained again) add nothing. A point is a
(network, test-time statistics policy) pair: a trial evaluated under several policies (a space's
`policies`) contributes one point per policy (`run.records.policy_rows`), all from the same weights.
`summarize(run_dir)` is the one way the commands open a finished (or running) run for reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.models.weights import Checkpoint, save_checkpoint
from normsearch.norms.running import StatsPolicy
from normsearch.recipe import Recipe
from normsearch.results.pareto import hypervolume_2d, non_dominated, pick, worst_reference
from normsearch.run.files import atomic_write_text
from normsearch.run.folder import RunFolder
from normsearch.run.records import UNIT_SEPARATOR, TrialRecord, own_policy, policy_rows, policy_view
from normsearch.space import Space
from normsearch.train import hardened_arch


@dataclass
class RunSummary:
    """A run read back: its recipe and space, every trial's state, and the front of the complete ones."""

    folder: RunFolder
    recipe: Recipe
    space: Space
    trials: list[TrialRecord]
    front: Front

    @property
    def candidates(self) -> list[TrialRecord]:
        """One record per searched configuration (a candidate's per-unit records left out)."""
        return [t for t in self.trials if UNIT_SEPARATOR not in t.trial_id]

    @property
    def rows(self) -> list[TrialRecord]:
        """One row per (candidate, test-time statistics policy) it was evaluated under, in candidate order:
        what the tables, `collect` and the front are made of."""
        return [row for t in self.candidates for row in policy_rows(t)]


def summarize(run_dir: str | Path) -> RunSummary:
    """Open a run folder and compute its front (a pure pass over its records)."""
    folder = RunFolder.open(run_dir)
    recipe, space = folder.load()
    trials = folder.trials()
    rows = [row for t in trials for row in policy_rows(t)]
    return RunSummary(folder, recipe, space, trials, compute_front(rows, recipe.search.objectives))


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
        """The trials with a point on the front (under any of their policies)."""
        return {t.trial_id for i in self.members for t in self.trials[i]}

    def member_rows(self) -> set[tuple[str, str | None]]:
        """The (trial, policy) rows on the front."""
        return {(t.trial_id, t.policy) for i in self.members for t in self.trials[i]}


def compute_front(trials: list[TrialRecord], objectives: dict[str, str]) -> Front:
    """Collapse duplicate configurations (mean of their objectives) and find the non-dominated points."""
    groups: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        if UNIT_SEPARATOR in trial.trial_id:
            continue  # a unit of a candidate: the candidate's own record carries its combined numbers
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


HELDOUT_RULES = ("max-heldout-avg", "max-worst-domain")


def pick_rules(objectives: dict[str, str], rotate: bool) -> tuple[str, ...]:
    """The `--pick` rules that mean something for a run: `knee` always; `max-source` when the source's
    val accuracy is an objective; `max-target` only when a target select split is (not under
    training-domain or leave-one-domain-out validation); under rotation also `max-heldout-avg` and
    `max-worst-domain`, read from the held-out domains' test accuracies (DomainBed's table row), so
    choosing by them is test-domain (oracle) selection and reads as optimistic."""
    rules = ["knee"]
    if SOURCE_VAL_ACC in objectives:
        rules.append("max-source")
    if SOURCE_VAL_ACC in objectives and TARGET_SELECT_ACC in objectives:
        rules.append("max-target")
    if rotate:
        rules.extend(HELDOUT_RULES)
    return tuple(rules)


def _heldout_score(group: list[TrialRecord], rule: str, held_out: list[str]) -> float | None:
    """A configuration's mean held-out average, or its mean worst held-out domain (None when unknown)."""
    values = []
    for trial in group:
        domains = [trial.test[d] for d in held_out if d in trial.test]
        if len(domains) != len(held_out) or not domains:
            return None
        values.append(sum(domains) / len(domains) if rule == "max-heldout-avg" else min(domains))
    return sum(values) / len(values)


def choose(
    front: Front,
    rule: str,
    max_source_drop: float | None = None,
    rotate: bool = False,
    held_out: list[str] | None = None,
) -> TrialRecord:
    """The trial a pick rule selects (among front members for `knee`, among all complete for the rest).
    A rule that does not apply to the run (see `pick_rules`) is one line naming the ones that do."""
    allowed = pick_rules(front.objectives, rotate)
    if rule not in allowed:
        raise NormsearchError(
            f"--pick {rule}: not available for this run (objectives {', '.join(front.objectives)}"
            f"{', rotated' if rotate else ''}); allowed: {', '.join(allowed)}"
        )
    if not front.points:
        raise NormsearchError("no completed trials to pick from")
    if rule in HELDOUT_RULES:
        scores = [_heldout_score(group, rule, held_out or []) for group in front.trials]
        known = [i for i, v in enumerate(scores) if v is not None]
        if not known:
            raise NormsearchError(
                f"--pick {rule}: no complete trial has test accuracies for every held-out domain"
            )
        return front.trials[max(known, key=lambda i: (scores[i], -i))][0]
    names = list(front.objectives)
    s = names.index(SOURCE_VAL_ACC) if SOURCE_VAL_ACC in names else 0
    t = names.index(TARGET_SELECT_ACC) if TARGET_SELECT_ACC in names else min(1, len(names) - 1)
    index = pick(front.points, list(front.objectives.values()), rule, s, t, max_source_drop)
    return front.trials[index][0]


def choose_for(summary: RunSummary, rule: str, max_source_drop: float | None = None) -> TrialRecord:
    """`choose` with the run's own rotation and held-out domains."""
    data = summary.recipe.data
    sources = [data.source] if isinstance(data.source, str) else list(data.source)
    return choose(summary.front, rule, max_source_drop, data.rotate, sources if data.rotate else [])


def export(
    run_dir: Path, recipe: Recipe, trial: TrialRecord, rule: str | None, weights: str | None = None
) -> dict[str, Any]:
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
            "policy": own_policy(trial),  # the test-time statistics `metrics` were measured under
            "selection": recipe.data.describe(),
            "selection_rule": recipe.data.selection,
            "data": recipe.data.provenance(),  # reproduces the images trained on (max_per_domain's subset)
            "started_from": trial.extra.get("init"),
            "versions": trial.versions,
            "weights": weights,
        },
    }


def export_trial(
    summary: RunSummary,
    out: Path,
    trial_id: str | None = None,
    rule: str | None = None,
    max_source_drop: float | None = None,
    weights: Path | None = None,
    policy: str | None = None,
) -> TrialRecord:
    """Choose a trial (by id, or by a pick rule over the front), write its document to `out` and, when
    asked, its final weights to `weights` (the ArchConfig written then is the one the weights fit, e.g.
    with a soft Switchable Norm's learned hard choices). `policy` chooses the (trial, policy) row: the
    trial's numbers under that test-time statistics policy and an ArchConfig whose `norm.inference` is it
    (with a pick rule: the pick among that policy's rows). Returns the chosen row."""
    if trial_id is not None:
        chosen = find_trial(summary.trials, trial_id)
        chosen = policy_row(chosen, policy) if policy is not None else chosen
    elif policy is not None:
        rows = [r for r in summary.rows if r.policy == policy_text(policy)]
        front = compute_front(rows, summary.recipe.search.objectives)
        data = summary.recipe.data
        sources = [data.source] if isinstance(data.source, str) else list(data.source)
        chosen = choose(front, rule or "knee", max_source_drop, data.rotate, sources if data.rotate else [])
    else:
        chosen = choose_for(summary, rule or "knee", max_source_drop)
    document = export(summary.folder.path, summary.recipe, chosen, rule, str(weights) if weights else None)
    if weights is not None:
        units = chosen.extra.get("units")
        if units:
            names = ", ".join(f"{chosen.trial_id}{UNIT_SEPARATOR}{u}" for u in units)
            raise NormsearchError(
                f"--weights: trial {chosen.trial_id} was trained once per protocol unit; export one unit's "
                f"weights with --trial (one of {names})"
            )
        if not chosen.complete:
            raise NormsearchError(
                f"--weights: trial {chosen.trial_id} is {chosen.status}; only a complete trial has "
                "final weights"
            )
        state = summary.folder.final_state(chosen.trial_id)
        arch = hardened_arch(ArchConfig.from_dict(chosen.arch or {}), state.model).to_dict()
        document["arch"] = arch
        source = f"{summary.folder.path} trial {chosen.trial_id}"
        save_checkpoint(Checkpoint(state.model, source, "normsearch", arch, document["provenance"]), weights)
    write_export(document, out)
    return chosen


def write_export(document: dict[str, Any], path: Path) -> None:
    """Write an exported document (atomically; an unwritable place is one line)."""
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))


def policy_text(policy: str) -> str:
    """`policy` in the records' spelling (``mix:alpha=0.50`` is ``mix:alpha=0.5``); a bad one is one line."""
    try:
        return str(StatsPolicy.parse(policy))
    except NormsearchError as error:
        raise NormsearchError(f"--policy: {error}") from None


def policy_row(trial: TrialRecord, policy: str) -> TrialRecord:
    """The (trial, policy) row of `trial` under `policy`; one line naming its policies when it has no such
    row."""
    row = policy_view(trial, policy_text(policy))
    if row is None:
        have = ", ".join(str(r.policy) for r in policy_rows(trial))
        raise NormsearchError(
            f"--policy {policy}: trial {trial.trial_id} was not evaluated under it; its policies: {have}"
        )
    return row


def find_trial(trials: list[TrialRecord], trial_id: str) -> TrialRecord:
    """The trial whose id is (or ends with) `trial_id`."""
    for trial in trials:
        if trial.trial_id == trial_id or trial.trial_id.endswith(trial_id):
            return trial
    raise NormsearchError(f"--trial: no trial {trial_id!r}; trials: {', '.join(t.trial_id for t in trials)}")
