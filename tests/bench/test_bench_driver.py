"""`normsearch bench driver` on a small N: every null-cost trial finishes through the real search path, the
run folder holds one terminal record per trial and the study agrees, and the table and verdicts print."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.run.folder import RunFolder

runner = CliRunner()


@pytest.mark.slow
def test_bench_driver_runs_null_cost_trials_and_times_the_commands(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", "driver", "--trials", "3", "--trials", "6", "--concurrency", "2", "--algorithm",
              "random", "-o", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "driver.json").read_text())
    assert [(r["trials"], r["finished"]) for r in saved["runs"]] == [(3, 3), (6, 6)]
    assert all(r["cpu_ms_per_trial"] > 0 and r["ask_ms"] > 0 and r["peak_rss_mb"] > 50 for r in saved["runs"])
    assert set(saved["commands"]) == {"show", "collect", "report"}
    assert (tmp_path / "report.html").stat().st_size > 1000
    largest = RunFolder(saved["commands_on"])
    trials = largest.trials()
    assert len(trials) == 6 and all(t.status == "complete" for t in trials)
    # The null trial's metrics, as its formula gives them for the sampled ratio.
    for t in trials:
        ratio = t.config["ratio"]
        assert t.metrics["source_val_acc"] == pytest.approx(90.0 - 20.0 * ratio**2)
    study = optuna.load_study(study_name="driver-random", storage=largest.study_url)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 6
    assert "peak RSS grew" in result.output and "show" in result.output


def test_the_front_sweep_equals_the_first_front_of_the_full_sort() -> None:
    """`non_dominated` (the per-trial front the driver keeps, made a sweep after `bench driver` profiled the
    full sort) against the first front of Deb's fast non-dominated sort, with ties and mixed directions."""
    import random

    from normsearch.results.pareto import non_dominated, non_dominated_sort

    rng = random.Random(0)
    for _ in range(300):
        k = rng.choice([2, 3])
        directions = [rng.choice(["max", "min"]) for _ in range(k)]
        points = [[float(rng.randint(0, 4)) for _ in range(k)] for _ in range(rng.randint(1, 40))]
        assert non_dominated(points, directions) == non_dominated_sort(points, directions)[0]
