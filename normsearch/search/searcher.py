"""The searcher Tune asks for configurations: the recipe's Optuna sampler over the run's study.

`StudySearcher` is a Ray Tune `Searcher` that samples define-by-run from the study on disk (so samplers see
the true conditional space) through the driver's `Ledger`, which owns the no-duplicate rule and tells the
study every outcome. Unlike stock `OptunaSearch`, a trial stopped early is never told COMPLETE with its
partial scores, and a resumed driver continues the study's unfinished trials instead of asking new ones.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import optuna
from ray.tune.search import Searcher

from normsearch.recipe import Recipe
from normsearch.search.ledger import Ledger


def make_sampler(recipe: Recipe) -> Any:
    """The Optuna sampler the recipe names, seeded from it."""
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    seed = recipe.search_seed
    algorithm = recipe.search.algorithm
    kwargs: dict[str, Any] = {}
    if recipe.search.constraints:
        # NSGA-II ranks by Deb's constrained domination, TPE by c-TPE (Watanabe & Hutter, 2023): both
        # steer sampling into the feasible region instead of the front filtering at the end.
        # Optuna 5 deprecates constraints_func (to go in v7) for Trial.set_constraint, which needs the live
        # Trial object; trials here are told by number outside it, and Optuna >= 3.6 is supported.
        warnings.filterwarnings("ignore", message=".*constraints_func", category=FutureWarning)
        kwargs["constraints_func"] = partial(recorded_constraints, count=len(recipe.search.constraints))
    if algorithm == "nsga2":
        if recipe.search.population:
            kwargs["population_size"] = recipe.search.population
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, **kwargs)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _grid_sampler(seed)


def recorded_constraints(trial: Any, count: int) -> list[float]:
    """The sampler's `constraints_func`: the violations the ledger computed from the trial's record (the
    user attribute ``constraints``), all infinite for a trial told without them."""
    values = trial.user_attrs.get("constraints")
    return [float(v) for v in values] if values is not None else [math.inf] * count


def _grid_sampler(seed: int) -> Any:
    """Optuna's BruteForceSampler without its end-of-grid `study.stop()`, which only works inside
    `study.optimize` (the study is told outside it here); the ledger ends the search when the space has
    been visited."""

    class GridSampler(optuna.samplers.BruteForceSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            try:
                super().after_trial(study, trial, state, values)
            except RuntimeError as error:
                if "Study.stop" not in str(error):
                    raise

    return GridSampler(seed=seed)


def make_searcher(ledger: Ledger) -> Any:
    """A Tune Searcher over `ledger` (metric and mode are the recipe's objectives)."""

    class StudySearcher(Searcher):
        def __init__(self, ledger: Ledger) -> None:
            objectives = ledger.objectives
            super().__init__(metric=list(objectives), mode=list(objectives.values()))
            self.ledger: Ledger | None = ledger

        def __getstate__(self) -> dict[str, Any]:
            state = dict(self.__dict__)
            state["ledger"] = None  # driver-side; the study on disk is the searcher's state
            return state

        def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
            return True  # the objectives come from the recipe, the space from the study's sampler

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            assert self.ledger is not None
            config = self.ledger.next_config()
            return Searcher.FINISHED if config is None else config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # the ledger's Tune callback records and tells the study (records first)

        def save(self, checkpoint_path: str) -> None:
            pass  # nothing to save: the study on disk and trials.jsonl are the state

        def restore(self, checkpoint_path: str) -> None:
            pass

    return StudySearcher(ledger)
