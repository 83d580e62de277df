"""`normsearch bench search`: the bench end to end through the real Ray path, on two tiny trials, and its
arithmetic on the numbers it returns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from normsearch.bench.search import SearchBench, _idle, bench_recipe, bench_search, ratios
from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.recipe import load_recipe
from normsearch.run.folder import RunFolder

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "bench_search.yaml"
# One epoch on 40 images: the bench measures the path around training, not training.
SMALLEST = {"train.epochs": 1, "data.n_train": 40, "data.n_val": 20, "data.n_test": 20}


def test_overhead_is_the_share_of_the_wall_not_spent_training() -> None:
    # By hand: Σ compute 10 + 12 = 22 s over 2 at once is 11 s of a 30 s wall; (30 - 11) / 30 = 19/30.
    bench = SearchBench((10.0, 12.0), 30.0, 4.0, 2, 1, True, (9.0, 11.0), Path("x"))
    assert bench.compute == 22.0 and bench.seconds_per_trial == 11.0
    assert bench.overhead == pytest.approx(19 / 30)
    assert not bench.meets_target and not bench.at_target_scale
    at_scale = SearchBench((10.0,) * 20, 204.0, 3.0, 1, 1, True, (), Path("x"))
    assert at_scale.overhead == pytest.approx(4 / 204) and at_scale.meets_target and at_scale.at_target_scale


def _epoch(trial: str, time: float, seconds: float) -> dict:
    return {"trial_id": trial, "status": "running", "time": time, "metrics": {"epoch_seconds": seconds}}


def test_idle_is_the_wall_outside_every_trials_span() -> None:
    # t000 spans [10, 20] (first epoch began 12 - 2), t001 [22, 30]: 18 s covered of [0, 31], 13 s idle.
    done = [{"trial_id": "t000", "status": "complete", "time": 20.0}]
    one_after_another = [_epoch("t000", 12.0, 2.0), *done, _epoch("t001", 25.0, 3.0)]
    one_after_another.append({"trial_id": "t001", "status": "complete", "time": 30.0})
    assert _idle(one_after_another, 0.0, 31.0) == pytest.approx(13.0)
    # Two at once: t001 spans [15, 25], overlapping t000's [10, 20]; the union is [10, 25], 16 s idle.
    overlapping = [_epoch("t000", 12.0, 2.0), _epoch("t001", 17.0, 2.0), *done]
    overlapping.append({"trial_id": "t001", "status": "complete", "time": 25.0})
    assert _idle(overlapping, 0.0, 31.0) == pytest.approx(16.0)
    bench = SearchBench((10.0,), 40.0, 4.0, 1, 1, True, (), Path("x"), idle=6.0)
    assert bench.idle_share == pytest.approx(0.15)


def test_ratios_are_distinct_and_evenly_spaced() -> None:
    assert ratios(5) == [0.25, 0.375, 0.5, 0.625, 0.75]
    assert ratios(1) == [0.5]
    assert len(set(ratios(20))) == 20
    with pytest.raises(NormsearchError, match="--trials 0"):
        ratios(0)


def test_bench_recipe_keeps_the_budget_and_searches_every_ratio_once(tmp_path: Path, tiny: Tiny) -> None:
    recipe, _ = load_recipe(RECIPE, overrides=["search.warm_start=sn", *tiny.but(SMALLEST).overrides()])
    bench, space = bench_recipe(recipe, 3, 1, tmp_path / "run", threads=1)
    assert bench.train == recipe.train and bench.data == recipe.data and bench.model == recipe.model
    assert bench.search.algorithm == "grid" and bench.search.num_samples == 3
    assert bench.search.scheduler.kind == "none"  # no trial stopped early: all cost the same
    assert bench.search.warm_start.kind == "none"
    archs = [space.to_arch(bench.model, v) for v in space.assignments()]
    assert [a.norm.ibn.ratio for a in archs] == [0.25, 0.5, 0.75]
    assert all(a.norm.ibn.variant == "a" and a.norm.ibn.stages == [1, 2] for a in archs)


@pytest.mark.slow
def test_two_tiny_trials_through_ray_and_the_formula_on_what_it_returns(
    tmp_path: Path, ray_local, tiny: Tiny
) -> None:
    recipe, _ = load_recipe(RECIPE, overrides=tiny.but(SMALLEST).overrides())
    steps: list[str] = []
    result = bench_search(recipe, tmp_path / "run", trials=2, concurrency=1, threads=1, on_step=steps.append)
    assert result.trials == 2 and result.threads == 1 and result.concurrency == 1
    assert not result.ray_started  # the session's Ray was already up
    assert all(s > 0 for s in result.trial_seconds)
    assert result.overhead == pytest.approx(
        (result.search_wall - sum(result.trial_seconds)) / result.search_wall
    )
    assert 0 < result.startup < result.search_wall
    assert result.startup <= result.idle < result.search_wall  # start-up is the first idle stretch
    assert len(result.search_trial_seconds) == 2 and all(s > 0 for s in result.search_trial_seconds)
    assert result.compute < result.search_wall  # the search did the same training, and more
    trials = RunFolder.open(tmp_path / "run").trials()
    assert sorted(t.config["ratio"] for t in trials) == [0.25, 0.75] and all(t.complete for t in trials)
    # Half the sequential trials before the search, half after: a drift in the machine's load hits both.
    first = next(i for i, s in enumerate(steps) if s.startswith("sequential run, trial 1/2"))
    search = next(i for i, s in enumerate(steps) if s.startswith("search of the same 2"))
    second = next(i for i, s in enumerate(steps) if s.startswith("sequential run, trial 2/2"))
    assert first < search < second
    assert any(s.startswith("search: 2/2 trials done") for s in steps)


def test_cli_refuses_an_existing_run_folder_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    result = CliRunner().invoke(app, ["bench", "search", str(RECIPE), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "-o" in result.output and "already holds a run" in result.output
