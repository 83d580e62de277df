"""Issue 20's damaged run folders, end to end on a real (tiny) search: a torn last record, a damaged line in
the middle of the records, a truncated study.db. Each ends in one line (or a warning), with nothing lost
and nothing trained twice."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.run.folder import RunFolder
from normsearch.run.records import FINISHED

runner = CliRunner()
pytestmark = pytest.mark.slow
TOLD = {"complete": optuna.trial.TrialState.COMPLETE}


def _study_matches_records(run: Path) -> None:
    trials = RunFolder(run).trials()
    study = optuna.load_study(study_name="quickstart", storage=RunFolder(run).study_url)
    assert len(study.trials) == len(trials) == 2
    by_key = {t.user_attrs["trial"]: t for t in study.trials}
    for t in trials:
        assert t.status == "complete" and by_key[t.trial_id].state == TOLD["complete"]
        assert by_key[t.trial_id].values == [t.metrics["source_val_acc"], t.metrics["target_select_acc"]]


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "error: " in line]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def test_a_torn_last_record_is_moved_aside_and_its_trial_recovered_from_the_study(run: Path) -> None:
    path = run / "trials.jsonl"
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = json.loads(data[start:])
    assert last["status"] == "complete"  # the run's last record ends a trial the study holds COMPLETE
    torn = data[: start + (len(data) - start) // 2]
    path.write_bytes(torn)

    shown = runner.invoke(app, ["show", str(run)])
    assert shown.exit_code == 0 and "last line is torn" in shown.output, shown.output

    resumed = runner.invoke(app, ["resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert f"the terminal record of {last['trial_id']} recovered from the study" in resumed.output
    assert "nothing left to run" in resumed.output  # no trial beyond num_samples
    assert (run / "trials.jsonl.torn").read_bytes() == torn[start:] + b"\n"  # kept, not deleted
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line is JSON
    ends = [r["trial_id"] for r in records if r["status"] in FINISHED]
    assert sorted(ends) == ["t000", "t001"]  # each trial ended once
    assert (
        records[-1]["recovered_from"] == "study"
        and records[-1]["metrics"]["source_val_acc"] == (last["metrics"]["source_val_acc"])
    )
    _study_matches_records(run)
    again = runner.invoke(app, ["show", str(run)])
    assert "torn line(s)" in again.output and "recovered from the study" in again.output, again.output


def test_a_damaged_line_in_the_middle_of_the_records_is_refused_naming_it(run: Path) -> None:
    path = run / "trials.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:40] + lines[2]  # what an append onto a cut line left before issue 20
    path.write_text("".join(lines))
    before = path.read_bytes()
    for command in (["resume", str(run)], ["show", str(run)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert f"{path}: line 2 is not a whole JSON record" in _one_error_line(result.output)
    assert path.read_bytes() == before and not (run / "trials.jsonl.torn").exists()


def test_a_truncated_study_is_reported_and_rebuilt_from_the_records(run: Path) -> None:
    study = run / "study.db"
    study.write_bytes(study.read_bytes()[: study.stat().st_size // 2])
    records_before = (run / "trials.jsonl").read_bytes()

    shown = runner.invoke(app, ["show", str(run)])
    assert shown.exit_code == 0, shown.output
    assert f"{study}: damaged" in shown.output and "--repair" in shown.output

    refused = runner.invoke(app, ["resume", str(run)])
    assert refused.exit_code == 2
    line = _one_error_line(refused.output)
    assert f"{study}: damaged" in line and f"normsearch resume {run} --repair" in line

    repaired = runner.invoke(app, ["resume", str(run), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "nothing left to run" in repaired.output
    assert (run / "study.db.damaged-1").stat().st_size > 0  # the damaged file is kept
    assert (run / "trials.jsonl").read_bytes() == records_before  # nothing trained, nothing re-recorded
    with sqlite3.connect(study) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    _study_matches_records(run)
