"""The run's Optuna study on a real SQLite file: opened with the recipe's objectives named and directed,
reopened as it was, and each trial told its outcome once, from the folded record, with its attributes."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from normsearch.run.folder import RunFolder
from normsearch.run.records import TrialRecord
from normsearch.run.study import close_trial, load_study, open_study, running_trials, set_attrs

STATE = optuna.trial.TrialState
# Order matters: the study's values follow the objectives' order, not the record's.
OBJECTIVES = {"target_select_acc": "max", "params": "min"}


def _folder(tmp_path: Path) -> RunFolder:
    return RunFolder(tmp_path)  # the study needs only the folder's place, not a recipe


def _study(tmp_path: Path) -> optuna.Study:
    return open_study(_folder(tmp_path), "unit", OBJECTIVES)


def _record(status: str, **fields) -> TrialRecord:
    return TrialRecord(trial_id="t000", status=status, config={"ratio": 0.5}, **fields)


def test_the_study_names_and_directs_its_objectives_and_reopens_as_it_was(tmp_path: Path) -> None:
    study = _study(tmp_path)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["target_select_acc", "params"]
    assert _folder(tmp_path).has_study()
    study.ask()
    again = open_study(_folder(tmp_path), "unit", OBJECTIVES)  # a resumed driver: the same study
    read = load_study(_folder(tmp_path), "unit")
    assert len(again.trials) == len(read.trials) == 1
    assert read.metric_names == ["target_select_acc", "params"]
    with pytest.raises(KeyError):
        load_study(_folder(tmp_path), "another")


def test_a_complete_record_is_told_its_values_in_objective_order_with_its_attributes(tmp_path: Path) -> None:
    study = _study(tmp_path)
    number = study.ask().number
    arch = {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"ratio": 0.5}}}
    record = _record(
        "complete",
        metrics={"params": 78042, "source_val_acc": 90.0, "target_select_acc": 41.5},
        test={"fog": 33.0, "noisy": 20.5},
        arch=arch,
        epoch=3,
    )
    assert close_trial(study, number, record, OBJECTIVES, constraints=[-1.0]) == "COMPLETE"
    (told,) = load_study(_folder(tmp_path), "unit").trials
    assert told.state == STATE.COMPLETE and told.values == [41.5, 78042.0]
    attrs = told.user_attrs
    assert attrs["trial"] == "t000" and attrs["epoch"] == 3 and json.loads(attrs["arch"]) == arch
    assert attrs["test/fog"] == 33.0 and attrs["test/noisy"] == 20.5 and attrs["constraints"] == [-1.0]
    assert "reason" not in attrs and "repeat_of" not in attrs  # None is not written
    assert running_trials(study) == []


@pytest.mark.parametrize(
    ("status", "extra", "told"),
    [
        ("pruned", {}, STATE.PRUNED),
        ("failed", {}, STATE.FAIL),
        ("repeat", {"outcome": "pruned"}, STATE.PRUNED),  # a repeat is told what its twin was told
        ("repeat", {"outcome": "failed"}, STATE.FAIL),
    ],
)
def test_pruned_failed_and_repeated_outcomes_with_the_reason(
    tmp_path: Path, status: str, extra: dict, told: optuna.trial.TrialState
) -> None:
    study = _study(tmp_path)
    number = study.ask().number
    record = _record(status, reason="why it ended", epoch=1, extra=extra, repeat_of="t007" if extra else None)
    assert close_trial(study, number, record, OBJECTIVES) == told.name
    (trial,) = load_study(_folder(tmp_path), "unit").trials
    assert trial.state == told and trial.user_attrs["reason"] == "why it ended"
    assert trial.user_attrs.get("repeat_of") == ("t007" if extra else None)


def test_a_repeat_of_a_complete_twin_is_told_the_twins_values(tmp_path: Path) -> None:
    study = _study(tmp_path)
    number = study.ask().number
    record = _record("repeat", metrics={"target_select_acc": 50.0, "params": 10}, repeat_of="t002")
    assert close_trial(study, number, record, OBJECTIVES) == "COMPLETE"
    assert study.trials[0].values == [50.0, 10.0] and study.trials[0].user_attrs["repeat_of"] == "t002"


def test_a_record_that_is_not_finished_or_lacks_an_objective_leaves_the_trial_running(tmp_path: Path) -> None:
    study = _study(tmp_path)
    first, second = study.ask().number, study.ask().number
    assert close_trial(study, first, _record("running", epoch=1), OBJECTIVES) == "RUNNING"
    lacking = _record("complete", metrics={"target_select_acc": 50.0})  # no params: cannot be told
    assert close_trial(study, second, lacking, OBJECTIVES) == "RUNNING"
    assert [t.number for t in running_trials(study)] == [first, second]
    assert study.trials[0].user_attrs == {"trial": "t000", "epoch": 1}  # attributes are written already


def test_set_attrs_writes_on_a_running_trial_and_skips_none(tmp_path: Path) -> None:
    study = _study(tmp_path)
    number = study.ask().number
    set_attrs(study, number, {"interrupted": True, "reason": None, "worker": "node:12"})
    assert load_study(_folder(tmp_path), "unit").trials[0].user_attrs == {
        "interrupted": True,
        "worker": "node:12",
    }
