"""A driver killed while its Ray runs leaves no process behind after `resume`: the Ray temp folder the
driver recorded in driver.json before `ray.init` names every process its Ray started (GCS, raylet, the
dashboard and runtime-env agents, workers), including those started after its last look; and the run
folder exists before its path is printed. Ray's start-up bound is one line, exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normsearch.run.folder import RunFolder
from normsearch.run.reconcile import session_processes

ROOT = Path(__file__).resolve().parents[2]
# The shared tiny budget with fewer images; each test sets its own epochs.
SMALLER = {"train.epochs": None, "data.n_train": 120, "data.n_val": 30, "data.n_test": 30}
pytestmark = pytest.mark.slow


def _driver(out: Path, tiny, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "normsearch", "run", str(ROOT / "recipes" / "quickstart.yaml")]
    command += ["--output", str(out), *tiny.but(SMALLER), "--set", "search.num_samples=2", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_driver_leaves_no_ray_process_after_resume(tmp_path: Path, tiny) -> None:
    out = tmp_path / "killed"
    driver = _driver(out, tiny, "--set", "train.epochs=3")
    assert driver.stdout is not None
    for line in driver.stdout:  # the path is printed only once the folder is a run
        if line.startswith("run folder "):
            assert RunFolder.is_run(out)
            break
    deadline = time.time() + 300
    while time.time() < deadline and '"running"' not in (
        (out / "trials.jsonl").read_text() if (out / "trials.jsonl").is_file() else ""
    ):
        time.sleep(0.5)
    (temp_dir,) = json.loads((out / "driver.json").read_text())["ray_dirs"]
    started = session_processes(temp_dir)
    recorded = RunFolder(out).recorded_processes()
    assert {"gcs_server", "raylet"} <= {ref.name for ref in started}
    # the agents the raylet starts after the driver's one look at its children are found by the folder
    assert {ref.pid for ref in started} - {ref.pid for ref in recorded}
    driver.kill()
    driver.wait(timeout=30)
    time.sleep(2)
    left = [*session_processes(temp_dir), *recorded]  # what Ray's fate-sharing did not end with the driver
    resumed = subprocess.run(
        [sys.executable, "-m", "normsearch", "resume", str(out)], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not [ref for ref in left if ref.alive()]
    assert not session_processes(temp_dir)


def test_ray_not_starting_in_time_is_one_line_exit_1_and_the_run_resumes(tmp_path: Path, tiny) -> None:
    out = tmp_path / "slow"
    driver = _driver(out, tiny, "--set", "train.epochs=1", "--ray-startup-timeout", "1")
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 1, output
    errors = [line for line in output.splitlines() if "error: " in line]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert "ray.startup_timeout 1 s" in errors[0] and f"Continue with: normsearch resume {out}" in errors[0]
    assert RunFolder.is_run(out)
    (temp_dir,) = json.loads((out / "driver.json").read_text())["ray_dirs"]
    assert not session_processes(temp_dir)  # what had started was ended
    resumed = subprocess.run(
        [sys.executable, "-m", "normsearch", "resume", str(out)], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(t.trial_id for t in RunFolder(out).trials() if t.complete) == ["t000", "t001"]
