"""The run folder through its public API on real files: creating and opening one, what it refuses, the
records it appends and reads back, Tune's attempt folders and the newest checkpoint, the driver's claim."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from normsearch.errors import NormsearchError
from normsearch.recipe import Recipe
from normsearch.run.checkpoints import write_state
from normsearch.run.folder import ProcessRef, RunFolder, check_new_output
from normsearch.space import Space
from normsearch.train import TrainState

THREE = {"params": {"ratio": {"type": "categorical", "choices": [0.25, 0.5, 0.75], "path": "norm.ibn.ratio"}}}


def _recipe() -> tuple[Recipe, Space]:
    recipe = Recipe.model_validate(
        {
            "name": "unit",
            "seed": 7,
            "model": {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"stages": [1]}}},
            "train": {"epochs": 3},
            "search": {"space": THREE, "algorithm": "grid", "num_samples": 3},
        }
    )
    return recipe, Space.model_validate(THREE)


def _created(tmp_path: Path) -> RunFolder:
    return RunFolder.create(tmp_path / "run", *_recipe())


def _checkpoint(folder: RunFolder, experiment: str, trial: str, epoch: int, final: bool = False) -> Path:
    """A real epoch checkpoint, where Tune puts one: tune/<experiment>/<trial dir>/checkpoint_<n>/."""
    history = [{"epoch": e, **({"final": True} if final and e == epoch else {})} for e in range(1, epoch + 1)]
    state = TrainState(epoch, {}, {}, {}, {}, 0, history)
    where = folder.tune_dir / experiment / folder.trial_dirname(trial) / f"checkpoint_{epoch:06d}"
    return write_state(state, where)


# --- life cycle ------------------------------------------------------------------------------------------
def test_create_writes_recipe_and_space_that_load_reads_back_equal(tmp_path: Path) -> None:
    recipe, space = _recipe()
    folder = RunFolder.create(tmp_path / "deep" / "run", recipe, space)
    assert folder.path == (tmp_path / "deep" / "run").resolve()
    assert sorted(p.name for p in folder.path.iterdir()) == ["recipe.yaml", "space.yaml"]
    loaded_recipe, loaded_space = RunFolder.open(folder.path).load()
    assert loaded_recipe.model_dump() == recipe.model_dump() and loaded_recipe.seed == 7
    assert loaded_space.model_dump() == space.model_dump() and loaded_space.size() == 3
    assert RunFolder.is_run(folder.path) and not RunFolder.is_run(tmp_path)
    assert folder.study_url == f"sqlite:///{folder.path / 'study.db'}" and not folder.has_study()


def test_create_refuses_an_existing_run_and_a_file_in_the_way(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    with pytest.raises(NormsearchError, match=r"already holds a run; use `normsearch resume"):
        RunFolder.create(folder.path, *_recipe())
    (tmp_path / "file").write_text("x")
    with pytest.raises(NormsearchError, match=r"file: is a file, not a folder"):
        RunFolder.create(tmp_path / "file", *_recipe())
    with pytest.raises(NormsearchError, match=r"file is a file, so no folder can be made under it"):
        check_new_output(tmp_path / "file" / "below" / "run")
    assert (tmp_path / "file").read_text() == "x"  # nothing was written over it


def test_an_empty_existing_folder_becomes_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    folder = RunFolder.create(tmp_path / "empty", *_recipe())
    assert RunFolder.is_run(folder.path)


def test_open_refuses_a_folder_without_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(NormsearchError, match=r"not a run folder \(no recipe.yaml\)"):
        RunFolder.open(tmp_path)


def test_discard_removes_what_create_made_and_keeps_a_folder_it_did_not_make(tmp_path: Path) -> None:
    made = _created(tmp_path)
    made.discard()
    assert not made.path.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    kept = RunFolder.create(tmp_path / "mine", *_recipe())
    kept.discard(made=False)
    assert sorted(p.name for p in kept.path.iterdir()) == ["notes.txt"] and not RunFolder.is_run(kept.path)


# --- records ---------------------------------------------------------------------------------------------
def test_records_come_back_in_order_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    assert folder.records() == []
    with pytest.raises(NormsearchError, match=r"no trials.jsonl \(nothing has run yet\)"):
        folder.trials()
    first = {"trial_id": "t000", "status": "running", "epoch": 1, "config": {"ratio": 0.5}}
    second = {"trial_id": "t000", "status": "complete", "epoch": 2, "metrics": {"source_val_acc": 61.0}}
    folder.append(first)
    folder.append(second)
    with folder.records_path.open("a") as handle:
        handle.write('{"trial_id": "t001", "sta')  # a driver killed in the middle of a write
    assert folder.records() == [first, second]
    (trial,) = folder.trials()
    assert (trial.trial_id, trial.status, trial.epoch) == ("t000", "complete", 2)
    assert trial.config == {"ratio": 0.5} and trial.metrics == {"source_val_acc": 61.0}


def test_confirmation_records_stay_out_of_the_search_trials(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    folder.append({"trial_id": "t000", "status": "complete", "config": {"ratio": 0.5}})
    folder.append({"trial_id": "t000/s1", "status": "complete", "confirm_of": "t000", "seed": 1})
    assert [t.trial_id for t in folder.trials()] == ["t000"]
    (confirmation,) = folder.confirmations()
    assert (confirmation.trial_id, confirmation.confirm_of, confirmation.seed) == ("t000/s1", "t000", 1)


def test_the_warm_start_record_and_the_pretrained_paths(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    assert folder.warm_start() is None
    supernet = {"ratios": {"bn1": [0.2, 0.5, 0.3]}, "queue": [2, 0]}
    folder.write_warm_start(supernet)
    assert RunFolder.open(folder.path).warm_start() == supernet
    assert folder.pretrained_path("") == folder.path / "pretrained" / "base.pt"
    assert folder.pretrained_path("art") == folder.path / "pretrained" / "art.pt"


# --- Tune's attempts and checkpoints -------------------------------------------------------------------
def test_attempts_are_numbered_in_order_past_nine_and_confirms_apart(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    assert folder.attempts() == [] and folder.new_attempt() == "attempt-1"
    for name in ("attempt-1", "attempt-2", "attempt-10", "attempt-9", "confirm-1"):
        (folder.tune_dir / name).mkdir(parents=True)
    assert folder.attempts() == ["attempt-1", "attempt-2", "attempt-9", "attempt-10"]
    assert folder.new_attempt() == "attempt-11"  # by number, not by text ("attempt-9" > "attempt-10")
    assert folder.attempts("confirm-") == ["confirm-1"] and folder.new_attempt("confirm-") == "confirm-2"
    assert folder.trial_dirname("t003/s1") == "t003-s1" and folder.trial_dirname("t003") == "t003"


def test_the_last_checkpoint_is_the_most_epochs_over_every_attempt(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    assert folder.last_checkpoint("t000") is None
    _checkpoint(folder, "attempt-1", "t000", 3)
    later = _checkpoint(folder, "attempt-2", "t000", 2)  # a retry that got less far
    assert folder.last_checkpoint("t000").parent.parent.name == "attempt-1"
    incomplete = later.parent / "checkpoint_000009"
    incomplete.mkdir()  # a checkpoint folder without its state.json: a write cut short, never chosen
    assert folder.last_checkpoint("t000").parent.parent.name == "attempt-1"
    tie = _checkpoint(folder, "attempt-2", "t000", 3)
    assert folder.last_checkpoint("t000") == tie  # on equal epochs the later attempt wins
    confirmed = _checkpoint(folder, "confirm-1", "t000/s1", 1)
    assert folder.last_checkpoint("t000/s1") == confirmed


def test_final_state_needs_the_final_epochs_checkpoint(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    with pytest.raises(NormsearchError, match=r"no checkpoint of trial t000 under tune/"):
        folder.final_state("t000")
    _checkpoint(folder, "attempt-1", "t000", 2)
    with pytest.raises(NormsearchError, match=r"holds epoch 2, not the trial's final epoch"):
        folder.final_state("t000")
    _checkpoint(folder, "attempt-2", "t000", 3, final=True)
    state = folder.final_state("t000")
    assert state.epoch == 3 and state.history[-1] == {"epoch": 3, "final": True}


# --- the driver ------------------------------------------------------------------------------------------
def test_a_process_is_known_by_pid_and_start_time(tmp_path: Path) -> None:
    me = psutil.Process()
    assert ProcessRef(me.pid, me.create_time()).alive()
    assert not ProcessRef(me.pid, me.create_time() - 5.0).alive()  # the same pid, another process


def test_claim_record_and_release_by_this_driver(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    assert folder.driver() == {} and folder.recorded_processes() == []
    folder.claim()
    held = folder.driver()
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["ray"] == []
    ray = [ProcessRef(11, 100.0, "raylet"), ProcessRef(12, 200.0, "gcs_server")]
    folder.record_processes(ray)
    folder.record_processes(ray[:1])  # recorded once, however often it is reported
    assert RunFolder(folder.path).recorded_processes() == ray
    folder.release()
    assert folder.driver()["pid"] is None and folder.recorded_processes() == []


def test_a_live_driver_keeps_the_run_and_a_dead_ones_processes_stay_listed(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    code = (
        "import sys, time; from normsearch.run.folder import ProcessRef, RunFolder; "
        "f = RunFolder(sys.argv[1]); f.claim(); f.record_processes([ProcessRef(11, 100.0, 'raylet')]); "
        "print('held', flush=True); "
        "time.sleep(120)"
    )
    command = [sys.executable, "-c", code, str(folder.path)]
    other = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(NormsearchError, match=rf"driven right now by process {other.pid}; stop it"):
            folder.claim()
    finally:
        other.kill()
        other.wait(timeout=30)
    folder.claim()  # the other driver is gone: this one takes over, and resume can end what it left
    assert folder.driver()["pid"] == os.getpid()
    assert folder.recorded_processes() == [ProcessRef(11, 100.0, "raylet")]


def test_a_driver_file_that_is_not_json_reads_as_no_driver(tmp_path: Path) -> None:
    folder = _created(tmp_path)
    (folder.path / "driver.json").write_text('{"pid": 1')
    assert folder.driver() == {}
    folder.claim()
    assert json.loads((folder.path / "driver.json").read_text())["pid"] == os.getpid()
