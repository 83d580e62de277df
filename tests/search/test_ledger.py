"""The driver's ledger without Ray: what it hands out, how each outcome reaches records and study, repeats."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder
from normsearch.run.study import open_study
from normsearch.search.ledger import Ledger
from normsearch.search.searcher import make_sampler
from normsearch.search.trial import FAILED, RESUME_KEY, TRIAL_KEY
from normsearch.space import Space

THREE = {"params": {"ratio": {"type": "categorical", "choices": [0.25, 0.5, 0.75], "path": "norm.ibn.ratio"}}}
OBJ = {"source_val_acc": "max", "target_select_acc": "max"}


def _ledger(tmp_path: Path, algorithm: str, num_samples: int, constraints: list[str] | None = None) -> Ledger:
    search = {"space": THREE, "algorithm": algorithm, "num_samples": num_samples}
    recipe = Recipe.model_validate(
        {
            "name": "unit",
            "model": {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"stages": [1]}}},
            "search": {**search, "constraints": constraints or []},
        }
    )
    space = Space.model_validate(THREE)
    folder = RunFolder.create(tmp_path / "run", recipe, space)
    study = open_study(folder, recipe.name, OBJ, make_sampler(recipe))
    return Ledger(folder, study, recipe, space, "attempt-1", budget=min(num_samples, space.size()))


def _final(epoch: int, src: float, tgt: float, final: bool = True) -> dict:
    return {
        "epoch": epoch,
        "final": final,
        "source_val_acc": src,
        "target_select_acc": tgt,
        "test": {"fog": 1.0},
    }


def test_a_grid_over_three_points_hands_out_each_once_then_ends(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, "grid", num_samples=6)
    assert ledger.budget == 3
    configs = [ledger.next_config() for _ in range(3)]
    assert sorted(c["ratio"] for c in configs) == [0.25, 0.5, 0.75]
    assert [c[TRIAL_KEY] for c in configs] == ["t000", "t001", "t002"] and all(
        c[RESUME_KEY] is None for c in configs
    )
    assert ledger.next_config() is None  # the budget (= the space) is spent


def test_outcomes_reach_records_first_then_the_study(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, "grid", num_samples=3)
    a, b, c = (ledger.next_config()[TRIAL_KEY] for _ in range(3))
    ledger.result(a, _final(1, 50.0, 20.0, final=False))
    ledger.result(a, _final(2, 90.0, 40.0))
    ledger.ended(a)
    ledger.result(b, _final(1, 60.0, 30.0, final=False))
    ledger.ended(b)  # stopped before its last epoch
    ledger.result(c, {FAILED: "NaN loss at epoch 1", "epoch": 1, "final": False})
    ledger.ended(c)
    trials = {t.trial_id: t for t in ledger.folder.trials()}
    assert trials[a].status == "complete" and trials[a].test == {"fog": 1.0}
    assert trials[b].status == "pruned" and trials[b].reason == (
        "stopped by Tune at epoch 1, before its last epoch (no scheduler rule applies)"
    )
    assert trials[c].status == "failed" and trials[c].reason == "NaN loss at epoch 1"
    study = {t.number: t for t in ledger.study.trials}
    state = optuna.trial.TrialState
    assert [study[n].state for n in (0, 1, 2)] == [state.COMPLETE, state.PRUNED, state.FAIL]
    assert study[0].values == [90.0, 40.0] and study[0].user_attrs["test/fog"] == 1.0
    assert study[2].user_attrs["reason"] == "NaN loss at epoch 1"
    assert (ledger.progress.done, ledger.progress.pruned, ledger.progress.failed) == (1, 1, 1)


@pytest.mark.parametrize("algorithm", ["random", "tpe", "nsga2"])
def test_a_sampled_repeat_is_not_trained_but_told_its_twins_result(tmp_path: Path, algorithm: str) -> None:
    ledger = _ledger(tmp_path, algorithm, num_samples=3)
    handed = []
    while (config := ledger.next_config()) is not None:
        handed.append(config)
        key = config[TRIAL_KEY]
        ledger.result(key, _final(2, 80.0 + config["ratio"], 30.0))
        ledger.ended(key)
    assert sorted(c["ratio"] for c in handed) == [0.25, 0.5, 0.75]  # each configuration trained once
    trials = ledger.folder.trials()
    repeats = [t for t in trials if t.status == "repeat"]
    trained = {t.trial_id: t for t in trials if t.status == "complete"}
    for repeat in repeats:
        twin = trained[repeat.repeat_of]
        assert repeat.metrics == twin.metrics and "not trained again" in repeat.reason
    state = optuna.trial.TrialState
    assert all(t.state == state.COMPLETE for t in ledger.study.trials)
    assert len(ledger.study.trials) == len(trials)


def test_a_repeat_of_a_running_configuration_waits_for_its_twin(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, "random", num_samples=3)
    first = ledger.next_config()
    # Sample until the sampler proposes the running configuration again (random over three points).
    seen = [first]
    while len(ledger.waiting) == 0:
        config = ledger.next_config()
        assert config is not None
        seen.append(config)
    twin = next(iter(ledger.waiting))
    waiting_number = ledger.waiting[twin][0]
    ledger.result(twin, {FAILED: "ValueError: broken", "epoch": 1, "final": False})
    ledger.ended(twin)
    study = {t.number: t for t in ledger.study.trials}
    assert study[waiting_number].state == optuna.trial.TrialState.FAIL
    assert study[waiting_number].user_attrs["repeat_of"] == twin
    repeat = next(t for t in ledger.folder.trials() if t.status == "repeat")
    assert repeat.reason.endswith("which failed; not trained again")


@pytest.mark.parametrize("algorithm", ["nsga2", "tpe"])
def test_constraints_reach_the_sampler_in_optunas_form(tmp_path: Path, algorithm: str) -> None:
    ledger = _ledger(
        tmp_path, algorithm, num_samples=3, constraints=["source_val_acc >= best - 1.0", "params <= 1000"]
    )
    sources = iter([90.0, 95.0, 94.5])  # the second raises the best; the third is within a point of it
    told: dict[str, float] = {}
    while (config := ledger.next_config()) is not None:
        key = config[TRIAL_KEY]
        src = next(sources)
        ledger.result(key, {**_final(2, src, 30.0), "params": 1200 if src == 94.5 else 800})
        ledger.ended(key)
        told[key] = src
    by_trial = {t.user_attrs["trial"]: t for t in ledger.study.trials}
    # Optuna's own record of what its constraints_func returned (the sampler reads exactly this).
    seen = [list(by_trial[key].system_attrs["constraints"]) for key in told]  # in training order
    assert seen == [[-1.0, -200.0], [-1.0, -200.0], [95.0 - 1.0 - 94.5, 200.0]]


def test_constraints_need_a_sampler_that_reads_outcomes() -> None:
    with pytest.raises(ValueError, match="algorithm random samples without looking at outcomes"):
        Recipe.model_validate(
            {"name": "u", "search": {"space": THREE, "algorithm": "random", "constraints": ["params <= 1"]}}
        )


def test_two_spellings_of_one_network_are_one_configuration(tmp_path: Path) -> None:
    from normsearch.search.preflight import network_count
    from normsearch.space import load_space

    recipe = Recipe.model_validate(
        {"name": "u", "model": {"backbone": {"preset": "resnet-mini"}}, "search": {"space": "ibn_ratio"}}
    )
    space = load_space("ibn_ratio")
    # 9 shared ratios + 9 x 9 per-stage pairs; a shared r builds the same network as the pair (r, r).
    assert space.size() == 90 and network_count(recipe, space) == 90 - 9
    spelled = {
        "params": {
            "how": {
                "type": "categorical",
                "choices": ["shared", "per_stage"],
                "sets": {"shared": {"norm.ibn.ratio": 0.5}, "per_stage": {"norm.ibn.ratio": [0.5]}},
            }
        }
    }
    recipe = Recipe.model_validate(
        {
            "name": "unit",
            "model": {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"stages": [1]}}},
            "search": {"space": spelled, "algorithm": "grid", "num_samples": 2},
        }
    )
    space = Space.model_validate(spelled)
    folder = RunFolder.create(tmp_path / "run", recipe, space)
    study = open_study(folder, recipe.name, OBJ, make_sampler(recipe))
    ledger = Ledger(folder, study, recipe, space, "attempt-1", budget=network_count(recipe, space))
    assert ledger.budget == 1
    first = ledger.next_config()
    ledger.result(first[TRIAL_KEY], _final(2, 80.0, 30.0))
    ledger.ended(first[TRIAL_KEY])
    assert (
        ledger.next_config() is None and "space exhausted: all 1 configuration(s)" in ledger.progress.message
    )


@pytest.mark.parametrize("rebuilt", [False, True], ids=["study kept", "study rebuilt from the records"])
@pytest.mark.parametrize("sampled", [[], ["norm"]], ids=["asked only", "one of two values sampled"])
def test_a_trial_asked_just_before_the_kill_finishes_its_sampling_on_resume(
    tmp_path: Path, sampled: list[str], rebuilt: bool
) -> None:
    """The driver died between `study.ask()` and the last suggest of a trial (the CI failure of a killed
    driver: `param_name mismatch: norm != None` from the grid sampler on resume). The resumed driver
    completes that trial's sampling under its study trial, so it never finishes with a partial assignment
    (which would train the recipe's base network and break the grid sampler's tree), and the grid still
    visits every configuration once. Rebuilt from the records (`resume --repair` after a damaged study),
    the unrecorded trial is likewise left to the resumed driver to sample and train."""
    from normsearch.recipe import load_recipe
    from normsearch.run.reconcile import reconcile
    from normsearch.run.study import rebuild_study

    root = Path(__file__).resolve().parents[2]
    recipe, space = load_recipe(root / "recipes" / "quickstart.yaml")
    folder = RunFolder.create(tmp_path / "run", recipe, space)
    objectives = recipe.search.objectives
    study = open_study(folder, recipe.name, objectives, make_sampler(recipe))
    first = Ledger(folder, study, recipe, space, "attempt-1", budget=5)
    done = first.next_config()[TRIAL_KEY]  # one trial trained and finished
    first.result(done, _final(1, 50.0, 20.0))
    first.ended(done)
    if sampled:
        study.enqueue_trial({"norm": "ibn_a"})  # so that `ratio` is the value left unsampled
    asked = study.ask()  # the next one asked, then the kill
    for name in sampled:
        space.params[name].suggest(asked, name)
    assert sorted(study.trials[asked.number].params) == sampled
    running = first.next_config()[TRIAL_KEY]  # a later trial started (recorded) before the kill
    first.result(running, _final(1, 30.0, 10.0, final=False))
    if rebuilt:
        rebuild_study(folder, recipe.name, objectives, space)
        assert (
            sorted(optuna.load_study(study_name=recipe.name, storage=folder.study_url).trials[1].params) == []
        )
    study = open_study(folder, recipe.name, objectives, make_sampler(recipe))
    recovery = reconcile(folder, study, objectives)
    second = Ledger(folder, study, recipe, space, "attempt-2", budget=5 - 1, continued=recovery.continued)
    handed = []
    while (config := second.next_config()) is not None:
        handed.append(config[TRIAL_KEY])
        second.result(config[TRIAL_KEY], _final(1, 40.0 + len(handed), 10.0))
        second.ended(config[TRIAL_KEY])
    study = optuna.load_study(study_name=recipe.name, storage=folder.study_url)
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all("norm" in t.params for t in trained)
    assert all("ratio" in t.params for t in trained if t.params["norm"] == "ibn_a")
    assert len({tuple(sorted(t.params.items())) for t in trained}) == len(trained) == 5
