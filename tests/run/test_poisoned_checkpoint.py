"""A run folder is shared, so a file in it must never run code: a pickle whose `__reduce__` calls
`os.system` is planted as a trial's epoch checkpoint (state.pt, whose model part is the trial's final
weights) in a real run folder; export --weights, diagnose, confirm, resume and finalize (continuing an
interrupted one) each refuse it in one line with exit code 2, and the payload's marker file never
appears."""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.run.checkpoints import STATE, SUMMARY, plain, read_state, write_state
from normsearch.run.folder import RunFolder
from normsearch.train import TrainState

runner = CliRunner()


class Payload:
    """What an attacker plants: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(path: Path, marker: Path, form: str) -> None:
    """Replace `path` by a payload: a bare pickle, or a torch zip file whose data.pkl holds it."""
    if form == "pickle":
        path.write_bytes(pickle.dumps({"epoch": 1, "model": Payload(marker)}))
    else:
        buffer = io.BytesIO()
        torch.save({"epoch": 1, "model": Payload(marker)}, buffer)
        path.write_bytes(buffer.getvalue())


def _refused(result, planted: Path, marker: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    # (a progress line without its newline may come first: the error is the last line, and the only one)
    assert sum("error: " in line for line in lines) == 1 and "error: " in lines[-1], result.output
    assert str(planted) in lines[-1] and "nothing in it was loaded" in lines[-1], result.output
    assert "Traceback" not in result.output
    assert not marker.exists()


def _state_of(run: Path, trial: str) -> Path:
    found = RunFolder(run).last_checkpoint(trial)
    assert found is not None
    return found / STATE


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pickle", "torch-zip"])
def test_export_weights_refuses_a_poisoned_checkpoint(run: Path, tmp_path: Path, form: str) -> None:
    marker = tmp_path / "MARKER"
    planted = _state_of(run, "t000")
    poison(planted, marker, form)
    out, weights = tmp_path / "t000.yaml", tmp_path / "t000.pt"
    result = runner.invoke(
        app, ["export", str(run), "-o", str(out), "--trial", "t000", "--weights", str(weights)]
    )
    _refused(result, planted, marker)
    assert not out.exists() and not weights.exists()


@pytest.mark.slow
def test_diagnose_refuses_a_poisoned_checkpoint(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    planted = _state_of(run, "t001")
    poison(planted, marker, "torch-zip")
    result = runner.invoke(app, ["diagnose", str(run), "--trial", "t001", "--images", "8"])
    _refused(result, planted, marker)


@pytest.mark.slow
def test_confirm_refuses_a_poisoned_interrupted_confirmation(run: Path, tmp_path: Path) -> None:
    """An interrupted confirmation continues from its checkpoint; a planted one is refused before Ray."""
    marker = tmp_path / "MARKER"
    folder = run / "tune" / "confirm-1" / "t000-s1" / "checkpoint_000000"
    folder.mkdir(parents=True)
    (folder / SUMMARY).write_text('{"epoch": 1}')
    poison(folder / STATE, marker, "pickle")
    before = (run / "trials.jsonl").read_bytes()
    result = runner.invoke(app, ["confirm", str(run), "--trials", "t000", "--seeds", "1"])
    _refused(result, folder / STATE, marker)
    assert (run / "trials.jsonl").read_bytes() == before


@pytest.mark.slow
def test_finalize_refuses_a_poisoned_interrupted_finalize(run: Path, tmp_path: Path) -> None:
    """An interrupted finalize continues from its checkpoint; a planted one is one line in the driver (it
    used to reach a Ray trial, which failed after minutes and wrote a FAILED record into the folder)."""
    from normsearch.recipe import load_recipe

    marker = tmp_path / "MARKER"
    out = tmp_path / "final"
    seed = load_recipe(run / "recipe.yaml")[0].seed
    request = {"run": str(run), "trial": "t000", "seeds": [seed]}
    folder = out / "tune" / "attempt-1" / f"final-s{seed}" / "checkpoint_000000"
    folder.mkdir(parents=True)
    (out / "request.json").write_text(json.dumps(request))
    (folder / SUMMARY).write_text('{"epoch": 1}')
    poison(folder / STATE, marker, "torch-zip")
    result = runner.invoke(app, ["finalize", str(run), "--trial", "t000", "-o", str(out)])
    _refused(result, folder / STATE, marker)
    assert not (out / "records.jsonl").is_file() or not (out / "records.jsonl").read_text().strip()


def _unfinish(run: Path, trial: str, number: int) -> None:
    """A driver killed in `trial`'s last epoch leaves no terminal record and the study trial RUNNING."""
    lines = (run / "trials.jsonl").read_text().splitlines(keepends=True)
    # By field, not by text: an ArchConfig's `inference: running` puts "running" in every record's text.
    kept = [
        line
        for line in lines
        if not (json.loads(line)["trial_id"] == trial and json.loads(line)["status"] != "running")
    ]
    assert len(kept) < len(lines)
    (run / "trials.jsonl").write_text("".join(kept))
    with sqlite3.connect(run / "study.db") as db:
        (tid,) = db.execute("SELECT trial_id FROM trials WHERE number = ?", (number,)).fetchone()
        db.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL WHERE trial_id = ?", (tid,))
        db.execute("DELETE FROM trial_values WHERE trial_id = ?", (tid,))


@pytest.mark.slow
def test_resume_refuses_a_poisoned_checkpoint_and_continues_from_the_real_one(
    run: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    _unfinish(run, "t001", 1)
    planted = _state_of(run, "t001")
    real = planted.read_bytes()
    poison(planted, marker, "torch-zip")
    ray_dirs = RunFolder(run).recorded_ray_dirs()  # a driver records one before it starts Ray
    result = runner.invoke(app, ["resume", str(run)])
    _refused(result, planted, marker)
    assert RunFolder(run).recorded_ray_dirs() == ray_dirs  # refused before Ray was started
    # The genuine checkpoint back: resume continues t001 from it and finishes it exactly once.
    planted.write_bytes(real)
    result = runner.invoke(app, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    trials = {t.trial_id: t for t in RunFolder(run).trials()}
    assert trials["t001"].status == "complete" and trials["t001"].resumed_from == 1
    assert [r["trial_id"] for r in RunFolder(run).records() if r["status"] == "complete"].count("t001") == 1


def _state(**changes) -> TrainState:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    fields = {
        "epoch": 2,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"base_lrs": [0.1], "lr_lambdas": [None]},
        "generators": {"data": torch.Generator().manual_seed(3).get_state(), "global": torch.get_rng_state()},
        "switched": 0,
        "history": [{"epoch": 1, "loss": 1.5, "final": False}],
        "scaler": None,
        "init": {"init": "scratch"},
    }
    return TrainState(**{**fields, **changes})


def test_a_state_round_trips_through_weights_only_and_keeps_every_value(tmp_path: Path) -> None:
    import numpy as np

    state = _state(history=[{"epoch": 1, "loss": np.float64(1.5), "final": np.bool_(True)}])
    write_state(state, tmp_path)
    back = read_state(tmp_path)
    assert torch.load(tmp_path / STATE, weights_only=True)["epoch"] == 2
    assert back.history == [{"epoch": 1, "loss": 1.5, "final": True}]
    assert type(back.history[0]["loss"]) is float and type(back.history[0]["final"]) is bool
    assert torch.equal(back.generators["data"], state.generators["data"])
    for name, tensor in state.model.items():
        assert torch.equal(back.model[name], tensor)
    assert back.optimizer["state"][0]["momentum_buffer"].equal(state.optimizer["state"][0]["momentum_buffer"])


def test_an_object_that_is_not_plain_is_refused_at_write_time(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state.init.where: a PosixPath"):
        write_state(_state(init={"where": Path("/x")}), tmp_path)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "nothing in it was loaded"),
        (b"not a torch file", "Unsupported operand"),
        ("tensor", r"holds Tensor"),
        ("missing-field", r"holds \['epoch'\]"),
        ("bool-epoch", "epoch is a bool"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path: Path, content, why: str) -> None:
    path = tmp_path / STATE
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "tensor":
        torch.save(torch.zeros(2), path)
    elif content == "missing-field":
        torch.save({"epoch": 1}, path)
    else:
        torch.save({**plain(_state().to_dict()), "epoch": True}, path)
    with pytest.raises(NormsearchError, match=why) as caught:
        read_state(tmp_path)
    assert str(caught.value).startswith(f"{path}: not a normsearch checkpoint") and "\n" not in str(
        caught.value
    )


def test_a_fifo_in_place_of_a_checkpoint_is_refused_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / STATE)  # opening it for reading would block forever
    with pytest.raises(NormsearchError, match="not a regular file"):
        read_state(tmp_path)
