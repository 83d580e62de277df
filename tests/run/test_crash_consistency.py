"""Crash consistency of a run folder: the driver is stopped at a write point of the records (after N bytes
of its appends, mid-line, at a line's end, with only the newline missing) or of the study (after its K-th
write), then resumed; some resumes are stopped again. After the last resume, every configuration ended
exactly once, nothing ran beyond num_samples, every line of trials.jsonl is JSON, and the study says what
the records say.

The many positions use tests/run/crash_driver.py: normsearch's real `run_search` (study, ledger, records,
reconcile) with Tune's trial execution replaced by a synchronous loop, forked from this process so that
each position costs a fraction of a second. The torn-record and damaged-study cases of issue 20 are also
run end to end on a real (tiny) search with Ray (test_torn_study.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest

from normsearch.run import journal
from normsearch.run.folder import RunFolder
from normsearch.run.records import FINISHED, UNIT_SEPARATOR, config_key

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crash_driver", HERE / "crash_driver.py")
crash_driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_driver)
TOLD = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


def drive(run_dir: Path, mode: str, **crash: int) -> int:
    """Run the driver in a forked child (stopped at `crash`, if given); its exit code."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.environ.pop(journal.CRASH_BYTES_ENV, None)
            os.environ.pop(journal.CRASH_STUDY_ENV, None)
            if "bytes" in crash:
                os.environ[journal.CRASH_BYTES_ENV] = str(crash["bytes"])
            if "study" in crash:
                os.environ[journal.CRASH_STUDY_ENV] = str(crash["study"])
            journal._written.update(bytes=0, study=0)
            crash_driver.main(str(run_dir), mode)
            code = 0
        except BaseException:  # the parent sees the exit code; the traceback goes to stderr
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def assert_consistent(run: Path) -> dict[str, int]:
    """The invariants after the last resume; returns what repairs the run needed (for coverage)."""
    lines = (run / "trials.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "trials.jsonl does not end with a whole line"
    records = [json.loads(line) for line in lines[:-1]]  # every line is JSON
    folder = RunFolder(run)
    trials = [t for t in folder.trials() if UNIT_SEPARATOR not in t.trial_id]
    assert all(t.finished for t in trials), [(t.trial_id, t.status) for t in trials]
    terminal = Counter(r["trial_id"] for r in records if r["status"] in FINISHED)
    assert all(n == 1 for n in terminal.values()), terminal  # each trial ended exactly once
    trained = [t for t in trials if t.status != "repeat"]
    assert len(trained) == crash_driver.NUM_SAMPLES  # nothing beyond num_samples, nothing short of it
    assert len({config_key(t.arch) for t in trained}) == len(trained)  # no configuration trained twice
    assert all(t.status == "complete" for t in trained)
    study = optuna.load_study(study_name="quickstart", storage=folder.study_url)
    assert len(study.trials) == len(trials)
    by_key = {t.user_attrs.get("trial"): t for t in study.trials}
    for t in trials:
        told = by_key[t.trial_id]
        outcome = t.extra.get("outcome", "complete") if t.status == "repeat" else t.status
        assert told.state == TOLD[outcome], (t.trial_id, t.status, told.state)
        if outcome == "complete":
            assert told.values == [t.metrics["source_val_acc"], t.metrics["target_select_acc"]]
    return {
        "torn": int((run / "trials.jsonl.torn").is_file()),
        "recovered": sum(1 for r in records if r.get("recovered_from") == "study"),
    }


def _warm(tmp: Path) -> None:
    """Import here, once, what every forked driver needs (Tune's classes, SQLAlchemy, the recipe's
    models), so that a fork starts with it loaded."""
    import ray.tune  # noqa: F401
    from ray.tune.search import Searcher  # noqa: F401

    import normsearch.search.tuner  # noqa: F401

    crash_driver.recipe_and_space()
    optuna.create_study(storage=f"sqlite:///{tmp / 'warm.db'}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted run: how many bytes it appends, how many study writes, where its lines end."""
    _warm(tmp_path_factory.mktemp("warm"))
    run = tmp_path_factory.mktemp("reference") / "run"
    assert drive(run, "run") == 0
    assert_consistent(run)
    data = (run / "trials.jsonl").read_bytes()
    ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    return {"bytes": len(data), "ends": ends, "study": _study_writes(run)}


def _study_writes(run: Path) -> int:
    # set_attrs writes one attribute at a time, tell once per finished trial: count them from the study
    study = optuna.load_study(study_name="quickstart", storage=RunFolder(run).study_url)
    return sum(len(t.user_attrs) + (t.state != optuna.trial.TrialState.RUNNING) for t in study.trials)


def _byte_positions(reference: dict) -> list[int]:
    """Mid-line, the newline lost, and exactly at a line's end, for every record line."""
    out, start = [1], 0
    for end in reference["ends"]:
        out += [(start + end) // 2, end - 1, end]
        start = end
    return sorted(set(p for p in out if 0 < p < reference["bytes"]))


def test_the_reference_run_counts_its_write_points(reference: dict) -> None:
    assert len(reference["ends"]) >= 9 and reference["study"] >= 15
    assert len(_byte_positions(reference)) + reference["study"] >= 40


@pytest.mark.slow
def test_a_crash_at_every_byte_class_of_the_records_loses_and_repeats_nothing(
    reference: dict, tmp_path: Path
) -> None:
    seen = Counter()
    positions = _byte_positions(reference)
    for i, position in enumerate(positions):
        run = tmp_path / f"b{position}"
        code = drive(run, "run", bytes=position)
        # (records carry times, so a run's length varies by a few bytes: the last positions may be past it)
        assert code == journal.CRASH_EXIT or (code == 0 and position > reference["bytes"] - 40), position
        seen["crashed"] += code == journal.CRASH_EXIT
        if not RunFolder.is_run(run):
            continue
        if i % 3 == 0:  # the resume itself is stopped too (while it repairs, recovers or trains)
            drive(run, "resume", bytes=300)
        assert drive(run, "resume") == 0, position
        for key, value in assert_consistent(run).items():
            seen[key] += bool(value)
    # the positions did exercise the repair: torn lines moved aside. (A crash of the driver cannot tear a
    # record the study was already told: the record is written first. That case, a file cut afterwards, is
    # test_torn_study.py's, on a real run.)
    assert seen["torn"] >= 10 and seen["crashed"] >= len(positions) - 2, seen


@pytest.mark.slow
def test_a_crash_after_every_study_write_loses_and_repeats_nothing(reference: dict, tmp_path: Path) -> None:
    for k in range(1, reference["study"] + 1):
        run = tmp_path / f"s{k}"
        assert drive(run, "run", study=k) == journal.CRASH_EXIT, k
        if k % 4 == 0:
            drive(run, "resume", study=2)
        assert drive(run, "resume") == 0, k
        assert_consistent(run)
