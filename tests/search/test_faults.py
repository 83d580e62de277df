"""Faults on real runs: Ctrl-C, a killed driver (twice, at different points), a killed trial worker, a
trial that raises, an all-NaN run. After each: every configuration ends exactly once, no finished trial is
run again, the study agrees with the records, and no Ray process of the run is left alive."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.run.driver import ProcessRef
from normsearch.run.folder import RunFolder
from normsearch.run.records import FINISHED, config_key

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
runner = CliRunner()
# Every test here runs real searches through Ray Tune, most of them killed and resumed.
pytestmark = pytest.mark.slow
STATE = optuna.trial.TrialState
TOLD = {"complete": STATE.COMPLETE, "pruned": STATE.PRUNED, "failed": STATE.FAIL}


def _records(out: Path) -> list[dict]:
    return RunFolder(out).records()


def _wait(out: Path, predicate, what: str, seconds: float = 240.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate(_records(out)):
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _driver(out: Path, tiny: Tiny, epochs: int = 3, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "normsearch", "run", QUICK, "--output", str(out)]
    command += [*tiny.but({"train.epochs": epochs}), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _terminal(records: list[dict]) -> list[str]:
    return [r["trial_id"] for r in records if r["status"] in FINISHED]


def assert_consistent(out: Path, configurations: int = 5) -> None:
    """Every configuration trained and finished exactly once; study == records; nothing left running."""
    records = _records(out)
    finished = Counter(_terminal(records))
    assert all(n == 1 for n in finished.values()), finished  # one terminal record per trial
    for tid in finished:  # nothing after a trial's terminal record
        last = max(i for i, r in enumerate(records) if r["trial_id"] == tid)
        assert records[last]["status"] in FINISHED
    trials = RunFolder(out).trials()
    trained = [t for t in trials if t.status != "repeat"]
    assert all(t.finished for t in trials)
    assert len({config_key(t.arch) for t in trained}) == len(trained) == configurations
    study = optuna.load_study(study_name="quickstart", storage=RunFolder(out).study_url)
    by_trial = {t.user_attrs.get("trial"): t for t in study.trials}
    assert len(study.trials) == len(trials)
    for t in trials:
        told = by_trial[t.trial_id]
        if t.status == "repeat":
            continue
        assert told.state == TOLD[t.status], (t.trial_id, t.status, told.state)
        if t.status == "complete":
            assert told.values == [t.metrics["source_val_acc"], t.metrics["target_select_acc"]]


def _alive(refs: list[ProcessRef]) -> list[ProcessRef]:
    return [r for r in refs if r.alive()]


def _resume(out: Path) -> str:
    result = runner.invoke(app, ["resume", str(out)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_ctrl_c_exits_130_with_the_resume_command_and_resume_loses_and_repeats_nothing(
    tmp_path: Path, ray_local, tiny: Tiny
) -> None:
    out = tmp_path / "sigint"
    driver = _driver(out, tiny)
    _wait(out, lambda rs: "complete" in {r["status"] for r in rs}, "a finished trial")
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 130, output
    assert f"Continue with: normsearch resume {out}" in output
    before = _records(out)
    done_before = set(_terminal(before))
    assert done_before and len(done_before) < 5  # stopped part-way (trials running then are "interrupted")
    recorded = RunFolder(out).recorded_processes()
    _resume(out)
    assert_consistent(out)
    after = _records(out)[len(before) :]
    assert not {r["trial_id"] for r in after} & done_before  # no finished trial touched again
    assert not _alive(recorded)


@pytest.mark.parametrize("point", ["after a finished trial", "during the first epochs"])
def test_a_killed_driver_resumes_from_checkpoints_and_ends_its_ray(
    tmp_path: Path, ray_local, tiny: Tiny, point: str
) -> None:
    out = tmp_path / "sigkill"
    driver = _driver(out, tiny, 4)
    if point == "after a finished trial":
        _wait(out, lambda rs: bool(_terminal(rs)), point)
    else:
        _wait(out, lambda rs: any(r.get("epoch") == 2 and r["status"] == "running" for r in rs), point)
    recorded = RunFolder(out).recorded_processes()
    assert recorded, "the driver recorded no Ray process"
    driver.kill()
    driver.wait(timeout=30)
    before = _records(out)
    done_before = set(_terminal(before))
    epochs_reached = {r["trial_id"]: r["epoch"] for r in before if r["status"] == "running"}
    stdout = _resume(out)
    assert "resume:" in stdout and "unfinished trial(s) continue" in stdout
    assert_consistent(out)
    after = _records(out)[len(before) :]
    assert not {r["trial_id"] for r in after} & done_before
    for record in after:  # a continued trial starts from its checkpoint, not from epoch 0
        tid = record["trial_id"]
        if record["status"] == "running" and tid in epochs_reached and tid not in done_before:
            # (a checkpoint of the last epoch is only reported again: epoch == resumed_from)
            assert record.get("resumed_from", 0) >= 1 and record["epoch"] >= record["resumed_from"]
    assert not _alive(recorded)


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path: Path, ray_local, tiny: Tiny) -> None:
    out = tmp_path / "worker"
    killed: dict[str, int] = {}

    def kill_first_worker() -> None:
        # At epoch 2 the epoch-1 checkpoint is surely registered with Tune (a result is recorded by the
        # driver just before Tune registers the checkpoint that came with it).
        _wait(out, lambda rs: any(r.get("epoch") == 2 and r["status"] == "running" for r in rs), "epoch 2")
        record = next(r for r in _records(out) if r.get("epoch") == 2 and r["status"] == "running")
        worker = next(r for r in _records(out) if r["trial_id"] == record["trial_id"] and r.get("metrics"))
        pid = int(worker["metrics"]["worker"].rpartition(":")[2])
        killed[record["trial_id"]] = pid
        os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=kill_first_worker, daemon=True)
    watcher.start()
    result = runner.invoke(app, ["run", QUICK, "--output", str(out), *tiny.but({"train.epochs": 4})])
    watcher.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert killed, "no worker was killed"
    assert_consistent(out)
    (tid,) = killed
    runs = [r for r in _records(out) if r["trial_id"] == tid and r["status"] == "running"]
    assert any(r.get("resumed_from", 0) >= 1 for r in runs), runs  # Tune restored its epoch checkpoint
    assert all(t.complete for t in RunFolder(out).trials())


def test_a_trial_that_raises_says_why_everywhere(tmp_path: Path, ray_local) -> None:
    """IBN-b puts InstanceNorm after a stage whose maps are 1×1 at 8 px with the ImageNet stem: torch
    raises on the first step. The trial fails with the reason; the other trial completes."""
    out = tmp_path / "raises"
    space = {
        "params": {
            "norm": {
                "type": "categorical",
                "choices": ["bn", "ibn_b"],
                "sets": {"ibn_b": {"norm.ibn.variant": "b", "norm.ibn.stages": [1, 2]}},
            }
        }
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "raises",
                "data": {"size": 8, "n_train": 100, "n_val": 20, "n_test": 20},
                "model": {"backbone": {"preset": "resnet18"}},
                "train": {"epochs": 1, "batch_size": 20},
                "search": {"space": space, "algorithm": "grid", "num_samples": 2},
            }
        )
    )
    result = runner.invoke(app, ["run", str(recipe), "--output", str(out)])
    assert result.exit_code == 0, result.output
    trials = {t.config["norm"]: t for t in RunFolder(out).trials()}
    failed = trials["ibn_b"]
    assert trials["bn"].complete and failed.status == "failed"
    assert failed.reason.startswith("ValueError: Expected more than 1 spatial element")
    study = optuna.load_study(study_name="raises", storage=RunFolder(out).study_url)
    told = next(t for t in study.trials if t.user_attrs["trial"] == failed.trial_id)
    assert told.state == STATE.FAIL and told.user_attrs["reason"] == failed.reason
    shown = runner.invoke(app, ["show", str(out)])
    assert (
        shown.exit_code == 0
        and "ValueError:" in shown.stdout
        and "Expected more" in shown.stdout
        and "failed" in shown.stdout
    )


def test_a_run_whose_trials_all_diverge_fails_with_the_reason(tmp_path: Path, ray_local, tiny: Tiny) -> None:
    out = tmp_path / "nan"
    result = runner.invoke(
        app, ["run", QUICK, "--output", str(out), *tiny.but({"train.epochs": 2}), "--set", "train.lr=1e6"]
    )
    assert result.exit_code == 1, result.output
    assert "every trial failed" in result.stdout
    trials = RunFolder(out).trials()
    assert len(trials) == 5 and all(t.status == "failed" for t in trials)
    assert all(re.fullmatch(r"(NaN|infinite) loss at epoch [12]", t.reason or "") for t in trials), trials
    study = optuna.load_study(study_name="quickstart", storage=RunFolder(out).study_url)
    assert {t.state for t in study.trials} == {STATE.FAIL}
    # Nothing on the front: a diverged trial is not a candidate.
    assert "Pareto front (0 of 0" in result.stdout
