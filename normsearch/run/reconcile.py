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

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.run.driver import ProcessRef
from normsearch.run.folder import RunFolder
from normsearch.run.records import UNIT_SEPARATOR, TrialRecord, fold_records, trial_key, unit_trial_id
from normsearch.run.study import TEST_ATTR, close_trial, running_trials, set_attrs


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
    repaired: list[str] = field(default_factory=list)  # what was done to the records file (a torn line)
    recovered: list[str] = field(default_factory=list)  # terminal records given back from the study
    continued: list[Continued] = field(default_factory=list)
    waiting: dict[str, list[int]] = field(default_factory=dict)  # twin trial -> waiting repeat numbers
    ended_processes: int = 0

    def summary(self) -> str:
        parts = list(self.repaired)
        if self.recovered:
            parts.append(
                f"the terminal record of {', '.join(self.recovered)} recovered from the study "
                "(recovered_from: study)"
            )
        if self.closed:
            parts.append(f"{len(self.closed)} finished trial(s) told to the study")
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
    # A local checkpoint or one in the storage; read (safely) in the driver so that a planted file is one
    # line before any trial is handed it.
    from normsearch.run.storage import checkpoint_epoch, read_checkpoint

    units = units or [""]
    recovery = Recovery()
    repaired = folder.repair_records()
    recovery.repaired = [repaired] if repaired else []
    recovery.recovered = recover_from_study(folder, study, objectives)
    records = {t.trial_id: t for t in folder.trials()} if folder.records_path.is_file() else {}
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
            if checkpoint is not None:
                read_checkpoint(checkpoint)
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


def recover_from_study(folder: RunFolder, study: Any, objectives: dict[str, str]) -> list[str]:
    """Give back the terminal record of every trial the study holds finished (COMPLETE, PRUNED, FAIL) while
    the records do not: the driver appends a record before it tells the study, so this is a record a crash
    tore (moved aside by `RunFolder.repair_records`). It is rebuilt from what the study was told (values,
    the attributes `close_trial` writes) and the trial's earlier records, and marked
    ``recovered_from: study``. Returns the trial ids."""
    import optuna  # only when a study is reconciled

    state = optuna.trial.TrialState
    outcomes = {state.COMPLETE: "complete", state.PRUNED: "pruned", state.FAIL: "failed"}
    known = {t.trial_id: t for t in folder.trials()} if folder.records_path.is_file() else {}
    names = list(study.metric_names or objectives)
    recovered = []
    for frozen in study.get_trials(deepcopy=False, states=tuple(outcomes)):
        key = str(frozen.user_attrs.get("trial") or trial_key(frozen.number))
        earlier = known.get(key)
        if earlier is not None and earlier.finished:
            continue
        folder.append(_study_record(key, frozen, outcomes[frozen.state], earlier, names))
        recovered.append(key)
    return recovered


def _study_record(
    key: str, frozen: Any, status: str, earlier: TrialRecord | None, names: list[str]
) -> dict[str, Any]:
    attrs = frozen.user_attrs
    arch = json.loads(attrs["arch"]) if isinstance(attrs.get("arch"), str) else None
    metrics = dict(earlier.metrics) if earlier else {}
    metrics.update(zip(names, frozen.values or [], strict=False))
    record: dict[str, Any] = {
        "trial_id": key,
        "status": status,
        "time": time.time(),
        "config": earlier.config if earlier and earlier.config else dict(frozen.params),
        "arch": arch if arch is not None else (earlier.arch if earlier else None),
        "seed": earlier.seed if earlier else None,
        "epoch": attrs.get("epoch", earlier.epoch if earlier else None),
        "final": status == "complete",
        "metrics": metrics,
        "test": {k.removeprefix(TEST_ATTR): v for k, v in attrs.items() if k.startswith(TEST_ATTR)},
        "recovered_from": "study",
    }
    if attrs.get("reason"):
        record["reason"] = attrs["reason"]
    if attrs.get("repeat_of"):
        record.update(status="repeat", repeat_of=attrs["repeat_of"], extra={"outcome": status})
    return record


def repeat_record(key: str, twin: TrialRecord, **fields: Any) -> dict[str, Any]:
    """The record of a configuration not trained because `twin` trained it: `twin`'s outcome and metrics,
    marked as a repeat."""
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
    return fold_records([record])[0]


def mark_interrupted(folder: RunFolder, study: Any) -> list[str]:
    """After an interrupted driver: an "interrupted" record for every trial whose last record is still
    "running" (its study trial stays RUNNING, so `resume` continues it). Returns the trial ids."""
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
    """End (SIGKILL) the Ray processes a killed driver of this run started and left running: those it
    recorded by pid and start time, and every process whose command line names a Ray temp folder it
    recorded before starting Ray (so agents started after its last look are found too); never a process of
    this driver's own. Returns how many."""
    import psutil  # the process table only when processes are ended

    mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    refs = list(folder.recorded_processes())
    for temp_dir in folder.recorded_ray_dirs():
        refs.extend(session_processes(temp_dir))
    unique = {(ref.pid, ref.started): ref for ref in refs if ref.pid not in mine}
    return end_processes(list(unique.values()))


def session_processes(temp_dir: str) -> list[ProcessRef]:
    """The live processes whose command line names `temp_dir` (a local Ray started with it: GCS, raylet,
    its agents), and their descendants (workers, which rename themselves "ray::...")."""
    import psutil  # the process table only when processes are ended

    found: dict[int, ProcessRef] = {}
    for process in psutil.process_iter(["pid", "cmdline", "create_time", "name"]):
        try:
            cmdline = process.info["cmdline"] or []
            if process.pid == os.getpid() or not any(temp_dir in part for part in cmdline):
                continue
            for member in [process, *process.children(recursive=True)]:
                if member.pid != os.getpid():
                    found[member.pid] = ProcessRef(member.pid, member.create_time(), member.name())
        except (psutil.Error, TypeError):
            continue
    return list(found.values())


def end_processes(refs: list[ProcessRef]) -> int:
    """SIGKILL each process in `refs` that still runs (same pid and start time); returns how many."""
    ended = 0
    for ref in refs:
        if ref.pid == os.getpid() or not ref.alive():
            continue
        try:
            os.kill(ref.pid, signal.SIGKILL)
            ended += 1
        except (ProcessLookupError, PermissionError):
            continue
    return ended


def alive(refs: list[ProcessRef]) -> list[ProcessRef]:
    """The processes among `refs` that still run."""
    return [ref for ref in refs if ref.alive()]
