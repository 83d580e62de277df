"""The run's Optuna study: opened with its objectives named from the first trial on, and closed trial by
trial with the outcome the records hold.

Each study trial carries user attributes that let optuna-dashboard and the optuna CLI show what `normsearch
show` shows: ``trial`` (the record's trial id), ``epoch``, ``reason`` (why it failed or was stopped),
``repeat_of``, ``arch`` (the ArchConfig as JSON) and ``test/<domain>`` (test-domain accuracies after
training). A trial is told its outcome exactly once; attributes are written before the outcome, since a
finished Optuna trial cannot change.

Each function imports optuna inside it: reading a run's records and checking its study.db (`show`) does
not load it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.metrics import POLICIES
from normsearch.run.folder import STUDY as STUDY_FILE
from normsearch.run.folder import RunFolder
from normsearch.run.journal import study_written
from normsearch.run.records import UNIT_SEPARATOR, TrialRecord, own_policy, trial_key

# Study trial attribute names beside the objectives: ``test/<domain>`` (test accuracies after training) and
# ``policy/<policy>/<objective>`` (the objectives under each other test-time statistics policy).
TEST_ATTR = "test/"
POLICY_ATTR = "policy/"


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # set_metric_names and the samplers' experimental options are stable in use here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(folder: RunFolder, name: str, objectives: dict[str, str], sampler: Any = None) -> Any:
    """The run's study (created on first use), its objectives named and directed as the recipe says."""
    import optuna

    _quiet()
    require_sound_study(folder)
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
    require_sound_study(folder)
    return optuna.load_study(study_name=name, storage=folder.study_url)


def _trial_id(study: Any, number: int) -> int:
    """The storage's id of study trial `number` (trials are told by number, outside a live Trial)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def set_attrs(study: Any, number: int, attrs: dict[str, Any]) -> None:
    """Set user attributes on a running study trial (None values are skipped)."""
    trial_id = _trial_id(study, number)
    for key, value in attrs.items():
        if value is not None:
            study_written()  # a crash-test point before each write (the one after `ask` included)
            study._storage.set_trial_user_attr(trial_id, key, value)


def live_trial(study: Any, number: int) -> Any:
    """A live `optuna.Trial` for the study's running trial `number`, to finish its sampling: a `suggest_*`
    of a value the trial already holds returns that value, one it lacks is sampled by the study's sampler.
    A driver killed between `study.ask()` and its last suggest leaves a trial with some values or none;
    told an outcome so, it would break Optuna's grid sampler (a finished partial path is a leaf where
    other trials branch: "param_name mismatch") and train the recipe's base network under its number."""
    import optuna

    return optuna.trial.Trial(study, _trial_id(study, number))


def _policy_attrs(record: TrialRecord, objectives: dict[str, str]) -> dict[str, Any]:
    """The trial's test-time statistics policy (the one its objectives are measured under) and, for a
    network evaluated under several (``extra.policies``), each other policy's objectives as
    ``policy/<policy>/<objective>``: the study keeps one trained network per trial, the rest as attributes."""
    attrs: dict[str, Any] = {"policy": own_policy(record)} if record.arch is not None else {}
    for policy, measured in (record.extra.get(POLICIES) or {}).items():
        values = (measured or {}).get("metrics") or {}
        attrs.update({f"{POLICY_ATTR}{policy}/{m}": float(values[m]) for m in objectives if m in values})
    return attrs


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
        **{f"{TEST_ATTR}{domain}": value for domain, value in record.test.items()},
        **_policy_attrs(record, objectives),
    }
    if constraints is not None:
        attrs["constraints"] = constraints
    set_attrs(study, number, attrs)
    state = optuna.trial.TrialState
    # A repeat is told what its twin was told: its outcome is recorded with it.
    outcome = record.extra.get("outcome", "complete") if record.status == "repeat" else record.status
    told = "RUNNING"
    if outcome == "complete" and all(m in record.metrics for m in objectives):
        study.tell(number, [float(record.metrics[m]) for m in objectives])
        told = "COMPLETE"
    elif outcome == "pruned":
        study.tell(number, state=state.PRUNED)
        told = "PRUNED"
    elif outcome == "failed":
        study.tell(number, state=state.FAIL)
        told = "FAIL"
    if told != "RUNNING":
        study_written()
    return told


def running_trials(study: Any) -> list[Any]:
    """The study's trials that were asked and never told (FrozenTrial objects)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def check_study(folder: RunFolder) -> str | None:
    """What is wrong with the run's study.db, in one line (None when SQLite finds it sound or there is none
    yet): a truncated or overwritten file, found by opening it read-only and running `PRAGMA
    integrity_check`, before Optuna touches it."""

    path = folder.path / STUDY_FILE
    if not path.exists():
        return None
    if not path.is_file():
        return f"{path}: not a regular file"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as error:
        return f"{path}: damaged ({error})"
    if rows != ["ok"]:
        return f"{path}: damaged ({rows[0] if rows else 'integrity_check returned nothing'})"
    if "trials" not in tables or "studies" not in tables:
        return f"{path}: not an Optuna study (no trials/studies tables)"
    return None


def require_sound_study(folder: RunFolder) -> None:
    """Refuse, in one line with the command that repairs it, a damaged study.db."""
    problem = check_study(folder)
    if problem is not None:
        raise NormsearchError(
            f"{problem}; the records are the truth: `normsearch resume {folder.path} --repair` rebuilds the "
            "study from trials.jsonl (the damaged file is kept aside)"
        )


def rebuild_study(folder: RunFolder, name: str, objectives: dict[str, str], space: Any) -> Path:
    """Move a damaged study.db aside (``study.db.damaged-<k>``, never deleted) and rebuild the study from
    the records, trial number for trial number: each search trial is asked again with the values it was
    trained with (enqueued, then sampled through the space as the search does) and told the outcome its
    records hold (`close_trial`); a trial whose records show no end stays RUNNING, so `resume` continues
    it from its checkpoint; a study trial number with no record at all (asked, never trained) is left
    RUNNING without values, so `resume` samples it with the run's own sampler and trains it (`live_trial`):
    told FAIL with no values, it would break the grid sampler and lose that trial from the budget.
    Returns where the damaged file went."""
    import optuna

    path = folder.path / STUDY_FILE
    k = 1
    while path.with_name(f"{STUDY_FILE}.damaged-{k}").exists():
        k += 1
    aside = path.with_name(f"{STUDY_FILE}.damaged-{k}")
    if path.exists():
        path.rename(aside)
    trials = {t.trial_id: t for t in folder.trials() if UNIT_SEPARATOR not in t.trial_id}
    numbers = {int(tid[1:]): t for tid, t in trials.items() if tid[1:].isdigit()}
    study = open_study(folder, name, objectives, optuna.samplers.RandomSampler(seed=0))
    for number in range(max(numbers, default=-1) + 1):
        record = numbers.get(number)
        if record is not None:
            study.enqueue_trial(dict(record.config), skip_if_exists=False)
        asked = study.ask()
        assert asked.number == number, (asked.number, number)  # a fresh study numbers from 0
        if record is None:  # asked, never trained: left RUNNING without values (see the docstring)
            set_attrs(study, number, {"trial": trial_key(number)})
            continue
        space.sample(asked)
        close_trial(study, number, record, objectives)  # (running, interrupted: left RUNNING)
    return aside
