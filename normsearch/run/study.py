"""The run's Optuna study: opened with its objectives named from the first trial on, and closed trial by
trial with the outcome the records hold.

Each study trial carries user attributes that let optuna-dashboard and the optuna CLI show what `normsearch
show` shows: ``trial`` (the record's trial id), ``epoch``, ``reason`` (why it failed or was stopped),
``repeat_of``, ``arch`` (the ArchConfig as JSON) and ``test/<domain>`` (test-domain accuracies after
training). A trial is told its outcome exactly once; attributes are written before the outcome, since a
finished Optuna trial cannot change.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from normsearch.run.folder import RunFolder
from normsearch.run.records import TrialRecord


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # set_metric_names and the samplers' experimental options are stable in use here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(folder: RunFolder, name: str, objectives: dict[str, str], sampler: Any = None) -> Any:
    """The run's study (created on first use), its objectives named and directed as the recipe says."""
    import optuna

    _quiet()
    study = optuna.create_study(
        study_name=name,
        storage=folder.study_url,
        directions=["maximize" if d == "max" else "minimize" for d in objectives.values()],
        sampler=sampler,
        load_if_exists=True,
    )
    if study.metric_names is None:
        study.set_metric_names(list(objectives))
    return study


def load_study(folder: RunFolder, name: str) -> Any:
    """An existing run's study, read-only use (tables, reconciliation)."""
    import optuna

    _quiet()
    return optuna.load_study(study_name=name, storage=folder.study_url)


def set_attrs(study: Any, number: int, attrs: dict[str, Any]) -> None:
    """Set user attributes on a running study trial (None values are skipped)."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    for key, value in attrs.items():
        if value is not None:
            study._storage.set_trial_user_attr(trial_id, key, value)


def close_trial(
    study: Any,
    number: int,
    record: TrialRecord,
    objectives: dict[str, str],
    constraints: list[float] | None = None,
) -> str:
    """Tell the study how trial `number` ended, from its folded record; returns the state told.

    complete: COMPLETE with the objectives' values; pruned (stopped early): PRUNED; failed: FAIL with the
    reason; a repeat: what its twin was told. Anything else is left running. `constraints` (Optuna's form,
    <= 0 feasible) is stored as the user attribute ``constraints`` that the sampler's `constraints_func`
    reads when the trial is told."""
    import optuna

    attrs: dict[str, Any] = {
        "trial": record.trial_id,
        "epoch": record.epoch,
        "reason": record.reason,
        "repeat_of": record.repeat_of,
        "arch": json.dumps(record.arch, sort_keys=True) if record.arch is not None else None,
        **{f"test/{domain}": value for domain, value in record.test.items()},
    }
    if constraints is not None:
        attrs["constraints"] = constraints
    set_attrs(study, number, attrs)
    state = optuna.trial.TrialState
    # A repeat is told what its twin was told: its outcome is recorded with it.
    outcome = record.extra.get("outcome", "complete") if record.status == "repeat" else record.status
    if outcome == "complete" and all(m in record.metrics for m in objectives):
        study.tell(number, [float(record.metrics[m]) for m in objectives])
        return "COMPLETE"
    if outcome == "pruned":
        study.tell(number, state=state.PRUNED)
        return "PRUNED"
    if outcome == "failed":
        study.tell(number, state=state.FAIL)
        return "FAIL"
    return "RUNNING"


def running_trials(study: Any) -> list[Any]:
    """The study's trials that were asked and never told (FrozenTrial objects)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
