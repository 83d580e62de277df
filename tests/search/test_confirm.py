"""`normsearch confirm` on the checked-in two-trial run: real training through Ray with a new seed, records
appended, the search's own trials, front and study untouched; then diagnose and the Tune result files of
the confirmation run, and `dashboard`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.results.front import summarize
from normsearch.run.folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "quick2"  # t000, t001; each confirmed with seeds 1 and 2
runner = CliRunner()


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, ray_local_module) -> tuple[Path, list[str], str]:
    run = tmp_path_factory.mktemp("confirm") / "quick2"
    shutil.copytree(FIXTURE, run)
    before = (run / "trials.jsonl").read_text().splitlines()
    result = runner.invoke(
        app, ["confirm", str(run), "--trials", "t000", "--seeds", "3", "-o", str(run.parent / "c.png")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run, before, result.stdout


@pytest.fixture(scope="module")
def ray_local_module():
    import ray

    from normsearch.search.ray import start_ray

    if not ray.is_initialized():
        start_ray(None, num_cpus=2)
    yield


@pytest.mark.slow  # `confirmed` trains through Ray
def test_confirm_trains_only_the_missing_seed_and_appends_its_record(confirmed) -> None:
    run, before, stdout = confirmed
    after = (run / "trials.jsonl").read_text().splitlines()
    assert after[: len(before)] == before  # nothing written before is changed
    new = [json.loads(line) for line in after[len(before) :]]
    assert [(r["trial_id"], r["confirm_of"], r["seed"], r["status"]) for r in new] == [
        ("t000/s3", "t000", 3, "complete")
    ]
    assert (
        new[0]["epoch"] == 2 and set(new[0]["test"]) >= {"source", "fog"} and new[0]["attempt"] == "confirm-1"
    )
    assert "already on record, not trained again: t000/s1, t000/s2" in stdout
    assert "confirmed over new seeds" in stdout and "front from confirmed means" in stdout
    assert (run.parent / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # `confirmed` trains through Ray
def test_confirmation_never_changes_the_search(confirmed) -> None:
    run, _, _ = confirmed
    folder = RunFolder.open(run)
    assert [t.trial_id for t in folder.trials()] == ["t000", "t001"]
    summary = summarize(run)
    assert summary.front.member_ids() == {"t000"} and len(summary.front.points) == 2
    study = optuna.load_study(study_name="quickstart", storage=folder.study_url)
    assert len(study.trials) == 2
    seeds = sorted(t.seed for t in folder.confirmations() if t.confirm_of == "t000")
    assert seeds == [1, 2, 3]


@pytest.mark.slow  # `confirmed` trains through Ray
def test_confirm_again_trains_nothing(confirmed) -> None:
    run, _, _ = confirmed
    lines = (run / "trials.jsonl").read_text()
    result = runner.invoke(app, ["confirm", str(run), "--trials", "t000", "--seeds", "3"])
    assert result.exit_code == 0 and "t000/s1, t000/s2, t000/s3" in result.stdout
    assert (run / "trials.jsonl").read_text() == lines


@pytest.mark.slow  # `confirmed` trains through Ray
def test_the_confirmation_run_has_tune_result_files_and_a_checkpoint_to_diagnose(confirmed, tmp_path) -> None:
    from ray.tune import ExperimentAnalysis

    run, _, _ = confirmed
    trial_dir = run / "tune" / "confirm-1" / "t000-s3"
    assert (trial_dir / "progress.csv").is_file() and list(trial_dir.glob("events.out.tfevents.*"))
    frame = ExperimentAnalysis(str(run / "tune" / "confirm-1")).dataframe()
    assert len(frame) == 1 and 0 <= float(frame["source_val_acc"].iloc[0]) <= 100
    result = runner.invoke(
        app, ["diagnose", str(run), "--trial", "t000/s3", "--images", "32", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "divergence.csv").read_text().startswith("slot,normalizer,texture,pastel")


@pytest.mark.slow  # `confirmed` trains through Ray
def test_confirm_refuses_bad_choices(confirmed) -> None:
    run, _, _ = confirmed
    both = runner.invoke(app, ["confirm", str(run), "--front", "--trials", "t000"])
    assert both.exit_code == 2 and "not both" in both.output
    missing = runner.invoke(app, ["confirm", str(run), "--trials", "t999"])
    assert missing.exit_code == 2 and "no trial 't999'" in missing.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_or_prints_the_command(tmp_path, monkeypatch) -> None:
    run = tmp_path / "quick2"
    shutil.copytree(FIXTURE, run)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "normsearch", "dashboard", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and answer is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in answer["study_summaries"]] == ["quickstart"]
    finally:
        process.terminate()
        process.wait(timeout=20)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a)
    )
    printed = runner.invoke(app, ["dashboard", str(run)])
    assert printed.exit_code == 0 and f"optuna-dashboard sqlite:///{run.resolve()}/study.db" in printed.stdout
