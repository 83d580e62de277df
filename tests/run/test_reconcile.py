"""Resume's reconciliation on a real run folder and SQLite study: trials an earlier driver left RUNNING are
closed from the records when they finished, continued from their newest checkpoint when they did not,
repeats follow their twin; interrupted trials are marked; a killed driver's orphaned processes are ended."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest

from normsearch.run.checkpoints import write_state
from normsearch.run.folder import ProcessRef, RunFolder
from normsearch.run.reconcile import alive, end_orphans, mark_interrupted, reconcile, repeat_record
from normsearch.run.records import TrialRecord
from normsearch.run.study import open_study, set_attrs
from normsearch.train import TrainState

STATE = optuna.trial.TrialState
OBJECTIVES = {"source_val_acc": "max", "target_select_acc": "max"}


def _run(tmp_path: Path) -> tuple[RunFolder, optuna.Study]:
    folder = RunFolder(tmp_path)
    return folder, open_study(folder, "unit", OBJECTIVES)


def _asked(study: optuna.Study, count: int) -> list[int]:
    """Study trials the driver asked for, as the ledger does: a sampled value each, then left RUNNING."""
    numbers = []
    for _ in range(count):
        trial = study.ask()
        trial.suggest_categorical("ratio", [0.25, 0.5, 0.75])
        numbers.append(trial.number)
    return numbers


def _complete(trial_id: str, src: float, tgt: float) -> dict:
    metrics = {"source_val_acc": src, "target_select_acc": tgt}
    return {"trial_id": trial_id, "status": "complete", "epoch": 2, "final": True, "metrics": metrics}


def _checkpoint(folder: RunFolder, experiment: str, trial: str, epoch: int) -> Path:
    state = TrainState(epoch, {}, {}, {}, {}, 0, [{"epoch": e} for e in range(1, epoch + 1)])
    return write_state(
        state, folder.tune_dir / experiment / folder.trial_dirname(trial) / f"checkpoint_{epoch}"
    )


def test_finished_trials_are_told_and_unfinished_ones_continue_from_the_newest_checkpoint(
    tmp_path: Path,
) -> None:
    folder, study = _run(tmp_path)
    numbers = _asked(study, 3)
    folder.append({"trial_id": "t000", "status": "running", "epoch": 1, "config": {"ratio": 0.25}})
    folder.append(_complete("t000", 80.0, 40.0))  # written, then the driver died before telling the study
    folder.append({"trial_id": "t001", "status": "running", "epoch": 2})
    _checkpoint(folder, "attempt-1", "t001", 1)
    newest = _checkpoint(folder, "attempt-1", "t001", 2)
    recovery = reconcile(folder, study, OBJECTIVES)
    assert recovery.closed == ["t000"] and recovery.waiting == {}
    told = {t.number: t for t in study.get_trials()}
    assert told[0].state == STATE.COMPLETE and told[0].values == [80.0, 40.0]
    assert told[0].user_attrs["trial"] == "t000"
    by_key = {c.key: c for c in recovery.continued}
    assert sorted(by_key) == ["t001", "t002"]
    assert by_key["t001"].jobs == [("", newest, 2)] and by_key["t002"].jobs == [("", None, 0)]
    assert by_key["t001"].number == numbers[1] and by_key["t001"].params == told[1].params
    assert told[1].state == told[2].state == STATE.RUNNING  # continued under the same study trial
    assert recovery.summary() == (
        "1 finished trial(s) told to the study; "
        "2 unfinished trial(s) continue (t001 from epoch 2, t002 from epoch 0)"
    )
    again = reconcile(folder, study, OBJECTIVES)  # told once: a second resume closes nothing again
    assert again.closed == [] and [c.key for c in again.continued] == ["t001", "t002"]


def test_pruned_and_failed_records_close_their_trials_with_that_state(tmp_path: Path) -> None:
    folder, study = _run(tmp_path)
    _asked(study, 2)
    folder.append({"trial_id": "t000", "status": "pruned", "epoch": 1, "reason": "ASHA rung 1"})
    folder.append({"trial_id": "t001", "status": "failed", "epoch": 0, "reason": "ValueError: no"})
    recovery = reconcile(folder, study, OBJECTIVES)
    assert recovery.closed == ["t000", "t001"] and recovery.continued == []
    states = [(t.state, t.user_attrs["reason"]) for t in study.get_trials()]
    assert states == [(STATE.PRUNED, "ASHA rung 1"), (STATE.FAIL, "ValueError: no")]
    assert reconcile(folder, study, OBJECTIVES).summary() == "nothing to recover"


def test_a_repeat_follows_its_twin_closed_when_it_finished_and_waiting_otherwise(
    tmp_path: Path,
) -> None:
    folder, study = _run(tmp_path)
    _asked(study, 4)
    folder.append(_complete("t000", 70.0, 30.0) | {"config": {"ratio": 0.5}, "seed": 0})
    folder.append({"trial_id": "t001", "status": "running", "epoch": 1})
    set_attrs(study, 2, {"repeat_of": "t000"})
    set_attrs(study, 3, {"repeat_of": "t001"})
    recovery = reconcile(folder, study, OBJECTIVES)
    assert recovery.closed == ["t000", "t002"] and recovery.waiting == {"t001": [3]}
    assert [c.key for c in recovery.continued] == ["t001"]  # the repeat waits, it is not trained
    repeat = folder.records()[-1]
    assert repeat["trial_id"] == "t002" and repeat["status"] == "repeat" and repeat["repeat_of"] == "t000"
    assert repeat["metrics"] == {"source_val_acc": 70.0, "target_select_acc": 30.0}
    assert repeat["config"] == {"ratio": 0.5} and repeat["reason"].endswith("; not trained again")
    trial = study.get_trials()[2]
    assert trial.state == STATE.COMPLETE and trial.values == [70.0, 30.0]


def test_a_unit_already_finished_is_not_trained_again(tmp_path: Path) -> None:
    folder, study = _run(tmp_path)
    _asked(study, 1)
    folder.append(_complete("t000@art", 60.0, 20.0) | {"unit": "art"})
    folder.append({"trial_id": "t000@photo", "status": "running", "epoch": 1, "unit": "photo"})
    checkpoint = _checkpoint(folder, "attempt-1", "t000@photo", 1)
    (continued,) = reconcile(folder, study, OBJECTIVES, units=["art", "photo", "sketch"]).continued
    assert continued.jobs == [("photo", checkpoint, 1), ("sketch", None, 0)]
    assert list(continued.finished) == ["art"] and continued.finished["art"].complete


@pytest.mark.parametrize(
    ("outcome", "why"),
    [("complete", ""), ("pruned", ", which was stopped early"), ("failed", ", which failed")],
)
def test_a_repeat_record_carries_its_twins_outcome_and_says_why(outcome: str, why: str) -> None:
    twin = TrialRecord("t004", outcome, {"ratio": 0.5}, metrics={"loss": 1.0}, seed=3, epoch=2)
    record = repeat_record("t009", twin, attempt="attempt-2")
    assert record["status"] == "repeat" and record["extra"] == {"outcome": outcome}
    assert record["repeat_of"] == "t004" and record["seed"] == 3 and record["attempt"] == "attempt-2"
    assert record["reason"] == f"same configuration and seed as t004{why}; not trained again"
    # A repeat of a repeat names the trial that trained, and keeps its outcome.
    chained = TrialRecord("t009", "repeat", {}, repeat_of="t004", extra={"outcome": outcome})
    again = repeat_record("t011", chained)
    assert again["repeat_of"] == "t004" and again["extra"] == {"outcome": outcome}


def test_an_interrupted_driver_marks_its_running_trials_and_their_study_trials(tmp_path: Path) -> None:
    folder, study = _run(tmp_path)
    assert mark_interrupted(folder, study) == []  # no records yet: nothing to mark
    _asked(study, 2)
    folder.append({"trial_id": "t000", "status": "running", "epoch": 2})
    folder.append({"trial_id": "t001@art", "status": "running", "epoch": 1})
    folder.append(_complete("t002", 1.0, 1.0))
    assert mark_interrupted(folder, study) == ["t000", "t001@art"]
    states = {t.trial_id: (t.status, t.epoch) for t in folder.trials()}
    assert states == {"t000": ("interrupted", 2), "t001@art": ("interrupted", 1), "t002": ("complete", 2)}
    assert [t.user_attrs.get("interrupted") for t in study.get_trials()] == [True, True]
    assert [t.state for t in study.get_trials()] == [STATE.RUNNING] * 2  # resume continues them
    assert mark_interrupted(folder, study) == []  # an interrupted trial is not running any more


def test_end_orphans_ends_a_killed_drivers_process_and_never_its_own(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    # An orphan: its parent shell exits at once, so it is no child of this process (as a killed driver's
    # raylet is not a child of the next driver).
    started = subprocess.run(
        ["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
    )
    orphan = int(started.stdout)
    child = subprocess.Popen(["sleep", "120"])
    refs = [ProcessRef(p, psutil.Process(p).create_time(), "raylet") for p in (orphan, child.pid)]
    try:
        reused = ProcessRef(orphan, refs[0].started - 10.0, "old")  # the pid once named another process
        folder.record_processes([*refs, reused])
        assert alive(folder.recorded_processes()) == refs
        assert end_orphans(folder) == 1
        deadline = time.monotonic() + 10
        while refs[0].alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not refs[0].alive() and refs[1].alive() and alive(folder.recorded_processes()) == [refs[1]]
    finally:
        child.kill()
        child.wait(timeout=10)
        if refs[0].alive():  # only when the test failed before ending it; by pid and start time
            os.kill(orphan, signal.SIGKILL)
