"""What happens on resume: the study and the records are made to agree, and a killed driver's Ray
processes are ended.

The records are the truth, because the driver appends a trial's terminal record *before* it tells the
study: a study trial still RUNNING whose records say it finished (the driver died between the two) is told
now, from the records; one whose records do not say it finished is *continued*: the next driver runs it
again under the same study trial, from its newest epoch checkpoint. A repeated configuration that was
waiting for its twin to finish waits again (or is closed now, if the twin finished). Nothing finished is
run again, and every study trial ends COMPLETE, PRUNED or FAIL exactly once.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.run.folder import ProcessRef, RunFolder
from normsearch.run.records import UNIT_SEPARATOR, TrialRecord, trial_key, unit_trial_id
from normsearch.run.study import close_trial, running_trials, set_attrs


@dataclass(frozen=True)
class Continued:
    """An unfinished candidate the next driver runs again: its study trial, sampled values, the units still
    to train (unit name, its newest checkpoint or None, the epochs it holds) and the units already done."""

    number: int
    key: str
    params: dict[str, Any]
    jobs: list[tuple[str, Path | None, int]]
    finished: dict[str, TrialRecord] = field(default_factory=dict)


@dataclass
class Recovery:
    """What `reconcile` found and did, for `resume` to print."""

    closed: list[str] = field(default_factory=list)  # finished before the kill, now told to the study
    continued: list[Continued] = field(default_factory=list)
    waiting: dict[str, list[int]] = field(default_factory=dict)  # twin trial -> waiting repeat numbers
    ended_processes: int = 0

    def summary(self) -> str:
        parts = [f"{len(self.closed)} finished trial(s) told to the study"] if self.closed else []
        if self.continued:
            resumed = ", ".join(
                f"{unit_trial_id(c.key, unit)} from epoch {epoch}"
                for c in self.continued
                for unit, _, epoch in c.jobs
            )
            parts.append(
                f"{len(self.continued)} unfinished trial(s) continue ({resumed or 'to be combined'})"
            )
        if self.ended_processes:
            parts.append(f"{self.ended_processes} Ray process(es) of the killed driver ended")
        return "; ".join(parts) or "nothing to recover"


def reconcile(
    folder: RunFolder, study: Any, objectives: dict[str, str], units: list[str] | None = None
) -> Recovery:
    """Close or continue every study trial left RUNNING by an earlier driver (see the module docstring).
    `units` are the names of the protocol's training units ([""] for one)."""
    from normsearch.run.storage import checkpoint_epoch  # a local checkpoint or one in the storage

    units = units or [""]
    records = {t.trial_id: t for t in folder.trials()} if folder.records_path.is_file() else {}
    recovery = Recovery()
    waiting: list[tuple[int, str]] = []
    for frozen in running_trials(study):
        key = trial_key(frozen.number)
        record = records.get(key)
        twin = frozen.user_attrs.get("repeat_of")
        if twin is not None and (record is None or not record.finished):
            waiting.append((frozen.number, twin))
            continue
        if record is not None and record.finished:
            close_trial(study, frozen.number, record, objectives)
            recovery.closed.append(key)
            continue
        jobs, finished = [], {}
        for unit in units:
            uid = unit_trial_id(key, unit)
            done = records.get(uid)
            if done is not None and done.finished and uid != key:
                finished[unit] = done
                continue
            checkpoint = folder.last_checkpoint(uid)
            jobs.append((unit, checkpoint, checkpoint_epoch(checkpoint) if checkpoint else 0))
        recovery.continued.append(Continued(frozen.number, key, dict(frozen.params), jobs, finished))
    for number, twin in waiting:
        done = records.get(twin)
        if done is not None and done.finished:
            repeat = repeat_record(trial_key(number), done)
            folder.append(repeat)
            close_trial(study, number, _fold_one(repeat), objectives)
            recovery.closed.append(trial_key(number))
        else:
            recovery.waiting.setdefault(twin, []).append(number)
    return recovery


def repeat_record(key: str, twin: TrialRecord, **fields: Any) -> dict[str, Any]:
    """The record of a configuration not trained because `twin` trained it: `twin`'s outcome and metrics,
    marked as a repeat."""
    import time

    outcome = twin.status if twin.status != "repeat" else twin.extra.get("outcome", "complete")
    why = {"complete": "", "pruned": ", which was stopped early", "failed": ", which failed"}.get(outcome, "")
    return {
        "trial_id": key,
        "status": "repeat",
        "time": time.time(),
        "config": twin.config,
        "arch": twin.arch,
        "seed": twin.seed,
        "epoch": twin.epoch,
        "metrics": twin.metrics,
        "repeat_of": twin.repeat_of or twin.trial_id,
        "reason": f"same configuration and seed as {twin.repeat_of or twin.trial_id}{why}; not trained again",
        "extra": {"outcome": outcome},
        **fields,
    }


def _fold_one(record: dict[str, Any]) -> TrialRecord:
    from normsearch.run.records import fold_records

    return fold_records([record])[0]


def mark_interrupted(folder: RunFolder, study: Any) -> list[str]:
    """After an interrupted driver: an "interrupted" record for every trial whose last record is still
    "running" (its study trial stays RUNNING, so `resume` continues it). Returns the trial ids."""
    import time

    marked = []
    if not folder.records_path.is_file():
        return marked
    numbers = {trial_key(t.number): t.number for t in running_trials(study)}
    for trial in folder.trials():
        if trial.status == "running":
            folder.append(
                {
                    "trial_id": trial.trial_id,
                    "status": "interrupted",
                    "time": time.time(),
                    "epoch": trial.epoch,
                    "reason": "the driver was interrupted; `normsearch resume` continues it",
                }
            )
            candidate = trial.trial_id.partition(UNIT_SEPARATOR)[0]
            if candidate in numbers:
                set_attrs(study, numbers[candidate], {"interrupted": True})
            marked.append(trial.trial_id)
    return marked


def end_orphans(folder: RunFolder) -> int:
    """End (SIGKILL) the Ray processes a killed driver of this run started and left running, found by the
    pids and start times it recorded; never a process of this driver's own. Returns how many."""
    import psutil

    mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    ended = 0
    for ref in folder.recorded_processes():
        if ref.pid in mine or not ref.alive():
            continue
        try:
            os.kill(ref.pid, signal.SIGKILL)
            ended += 1
        except ProcessLookupError:
            continue
    return ended


def alive(refs: list[ProcessRef]) -> list[ProcessRef]:
    """The processes among `refs` that still run."""
    return [ref for ref in refs if ref.alive()]
