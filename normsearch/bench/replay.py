"""Replaying a search method against a tabulated space (normsearch.bench.efficiency) instead of training.

One replay is one search, sequential (concurrency 1), in an in-memory Optuna study with the recipe's
sampler (normsearch.search.searcher.make_sampler): each asked configuration is looked up in the table, and
its learning curve is "trained" epoch by epoch. The rules are the live search's:

- no duplicate: a configuration whose network (its architecture, as the live ledger keys it) was already
  run in this replay costs nothing again and the study is told its twin's outcome (its values, or
  PRUNED); a finite space fully visited ends the search;
- schedulers decide at their rung milestones with the live schedulers' own rules
  (normsearch.search.moasha: Ray's ASHA on one metric, MO-ASHA by non-dominated sorting over every
  objective), against the values recorded at that rung so far;
- a stopped trial is told PRUNED and never enters the front.

Cost is trial-epochs. One search seed "trains" every configuration with one table seed (`table_seed`:
the search seed modulo the table's seeds), so every method sees the same world for one search seed
(comparisons between methods are paired), and a replay that visits every configuration reaches exactly
that table seed's full-grid hypervolume. The
trajectory is (cumulative epochs, hypervolume of the finished trials' final values) after every trained
trial; the hypervolume's reference point is 0 for a maximised objective (accuracies in %), the table's
worst value for a minimised one.

`sn_warm` is the SN warm start (normsearch.search.warm_start): the supernet's epochs are charged first, its
learned slot ratios rank the space's configurations (`rank_configs`), the nearest `neighbours` are queued
as the first trials, and NSGA-II with MO-ASHA goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from normsearch.errors import NormsearchError
from normsearch.metrics import TARGET_SELECT_ACC
from normsearch.results.pareto import hypervolume_2d, non_dominated
from normsearch.run.records import config_key
from normsearch.search.moasha import asha_continues, moasha_continues, rung_milestones
from normsearch.search.searcher import make_sampler
from normsearch.search.warm_start import queue, rank_configs

if TYPE_CHECKING:
    from normsearch.arch import ArchConfig
    from normsearch.recipe import Recipe
    from normsearch.space import Space

ALGORITHMS = ("random", "grid", "tpe", "nsga2")
SCHEDULERS = ("none", "asha", "moasha")
WARM = "sn_warm"
METHODS = (*(f"{a}+{s}" for a in ALGORITHMS for s in SCHEDULERS), WARM)
MAX_REPEATS_IN_A_ROW = 200  # as the live ledger: a sampler proposing only visited points has nothing new


@dataclass(frozen=True)
class Table:
    """A tabulated space. `curves[key][seed]` is one run's learning curve: per epoch, the values of
    `metrics` (the objectives first, in `objectives` order, then e.g. an ASHA metric that is not one).
    `configs[key]` are the sampled values of configuration `key` (`config_key(values)`), in the space's
    enumeration order. `supernet[seed]` (may be empty) holds the
    SN supernet's `curve` (same layout) and its slot `ratios`."""

    name: str
    objectives: dict[str, str]
    metrics: list[str]
    epochs: int
    seeds: list[int]
    configs: dict[str, dict[str, Any]]
    curves: dict[str, dict[int, list[tuple[float, ...]]]]
    supernet: dict[int, dict[str, Any]]
    space: str | dict[str, Any] | None = None
    model: dict[str, Any] | None = None


@dataclass(frozen=True)
class Settings:
    """What a replay takes from the recipe: the scheduler's rung rule and metric, NSGA-II's population,
    the warm start's neighbours and fix_above."""

    grace_period: int = 1
    reduction_factor: float = 2.0
    metric: str = TARGET_SELECT_ACC
    mode: str = "max"
    population: int | None = None
    neighbours: int = 4
    fix_above: float | None = None

    @classmethod
    def of(cls, recipe: Recipe) -> Settings:
        """The settings a recipe's `search` section gives."""
        scheduler = recipe.search.scheduler
        return cls(
            grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
            metric=scheduler.metric,
            mode=scheduler.mode,
            population=recipe.search.population,
            neighbours=recipe.search.warm_start.neighbours,
            fix_above=recipe.search.warm_start.fix_above,
        )


@dataclass
class Trajectory:
    """One replay: `points` are (cumulative trial-epochs, hypervolume) after every trained trial (the SN
    warm start starts with the supernet's cost at hypervolume 0); `trials` says what each trained trial
    was (configuration key, table seed, epochs spent, pruned); `table_seed` is the world it ran in."""

    method: str
    search_seed: int
    table_seed: int
    points: list[tuple[int, float]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return self.points[-1][0] if self.points else 0

    @property
    def hypervolume(self) -> float:
        return self.points[-1][1] if self.points else 0.0


def reference_point(table: Table) -> tuple[float, ...]:
    """0 for a maximised objective (accuracies in %), the table's worst value for a minimised one."""
    refs = []
    for i, mode in enumerate(table.objectives.values()):
        if mode == "max":
            refs.append(0.0)
        else:
            refs.append(max(e[i] for runs in table.curves.values() for c in runs.values() for e in c))
    return tuple(refs)


def front_hypervolume(points: list[tuple[float, ...]], table: Table) -> float:
    """The hypervolume of the non-dominated `points` (objective values) against `reference_point`."""
    if len(table.objectives) != 2:
        raise NormsearchError(
            f"bench efficiency: hypervolume is computed for two objectives; the table has "
            f"{len(table.objectives)} ({', '.join(table.objectives)})"
        )
    if not points:
        return 0.0
    directions = list(table.objectives.values())
    members = [points[i] for i in non_dominated(points, directions)]
    return hypervolume_2d(members, reference_point(table), directions)


def grid_hypervolumes(table: Table) -> dict[int, float]:
    """Per table seed, the full grid's hypervolume: every configuration's final values at that seed."""
    n = len(table.objectives)
    return {
        s: front_hypervolume([table.curves[k][s][-1][:n] for k in table.configs], table) for s in table.seeds
    }


def grid_hypervolume(table: Table) -> float:
    """The full grid's hypervolume averaged over the table's seeds."""
    per_seed = grid_hypervolumes(table)
    return sum(per_seed.values()) / len(per_seed)


def architectures(table: Table, space: Space, base: ArchConfig) -> dict[str, str]:
    """Each configuration's key -> the key of the ArchConfig it builds. The live no-duplicate rule goes by
    the ArchConfig (two values that write the same config, e.g. two choices with the same `sets`, are one
    training), and so does the replay. It compares configs, not networks: ibn_ratio's shared ratio r
    (`ratio: r`) and per-stage (r, r) (`ratio: [r, r]`) are different configs of one network, trained
    twice by the live search and so by the replay."""
    return {k: config_key(space.to_arch(base, v).to_dict()) for k, v in table.configs.items()}


def distinct_architectures(table: Table, space: Space, base: ArchConfig) -> int:
    """How many different networks the table's configurations build: what a full grid search trains."""
    return len(set(architectures(table, space, base).values()))


def table_seed(table: Table, search_seed: int) -> int:
    """The table seed every configuration is 'trained' with in the replay of `search_seed` (whatever the
    method and the order configurations are visited in)."""
    return table.seeds[search_seed % len(table.seeds)]


def _sampler(recipe: Recipe, algorithm: str, search_seed: int, population: int | None) -> Any:
    search = recipe.search.model_copy(
        update={"algorithm": algorithm, "seed": search_seed, "population": population}
    )
    return make_sampler(recipe.model_copy(update={"search": search}))


class _Rungs:
    """The values recorded at each rung milestone so far (the schedulers' state at concurrency 1)."""

    def __init__(self, scheduler: str, settings: Settings, table: Table) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.n = len(table.objectives)
        self.modes = list(table.objectives.values())
        if scheduler == "asha" and settings.metric not in table.metrics:
            raise NormsearchError(
                f"bench efficiency: the ASHA metric {settings.metric!r} is not in the table "
                f"(tabulated: {', '.join(table.metrics)})"
            )
        self.metric = table.metrics.index(settings.metric) if settings.metric in table.metrics else 0
        self.milestones = (
            []
            if scheduler == "none"
            else [
                m
                for m in rung_milestones(settings.grace_period, settings.reduction_factor, table.epochs)
                if m < table.epochs
            ]
        )
        self.recorded: dict[int, list[Any]] = {m: [] for m in self.milestones}

    def run(self, curve: list[tuple[float, ...]]) -> int | None:
        """Train along `curve`; the epoch at which the scheduler stops it, or None if it finishes."""
        for milestone in self.milestones:
            values = curve[milestone - 1]
            recorded = self.recorded[milestone]
            if self.scheduler == "asha":
                recorded.append(values[self.metric])
                keep = asha_continues(
                    recorded, len(recorded) - 1, self.settings.mode, self.settings.reduction_factor
                )
            else:
                recorded.append(tuple(values[: self.n]))
                keep = moasha_continues(
                    recorded, len(recorded) - 1, self.modes, self.settings.reduction_factor
                )
            if not keep:
                return milestone
        return None


def replay(
    table: Table,
    space: Space,
    recipe: Recipe,
    method: str,
    search_seed: int,
    max_trials: int | None = None,
    settings: Settings | None = None,
    base: ArchConfig | None = None,
) -> Trajectory:
    """Replay one search `method` (``<algorithm>+<scheduler>`` of ALGORITHMS x SCHEDULERS, or
    ``sn_warm``) on `table` with `search_seed`, for at most `max_trials` trained trials (default: every
    distinct architecture). `recipe` gives the sampler's settings (and `settings` by default); `base` is the
    architecture the warm start ranks against (default: the recipe's model)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method not in METHODS:
        raise NormsearchError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    settings = settings or Settings.of(recipe)
    algorithm, scheduler = ("nsga2", "moasha") if method == WARM else method.split("+")
    n = len(table.objectives)
    study = optuna.create_study(
        directions=["maximize" if m == "max" else "minimize" for m in table.objectives.values()],
        sampler=_sampler(recipe, algorithm, search_seed, settings.population),
    )
    rungs = _Rungs(scheduler, settings, table)
    trajectory = Trajectory(method, search_seed, table_seed(table, search_seed))
    cost = 0
    if method == WARM:
        cost = _queue_warm_start(table, space, recipe, study, search_seed, settings, base)
        trajectory.points.append((cost, 0.0))
    arch_of = architectures(table, space, base or recipe.model)
    distinct = len(set(arch_of.values()))
    budget = distinct if max_trials is None else max_trials
    outcomes: dict[str, tuple[float, ...] | None] = {}  # architecture -> final values, None: pruned
    finished: list[tuple[float, ...]] = []
    repeats = 0
    while len(outcomes) < min(budget, distinct) and repeats < MAX_REPEATS_IN_A_ROW:
        trial = study.ask()
        values = space.sample(trial)
        key = config_key(values)
        if key not in table.configs:
            raise NormsearchError(
                f"bench efficiency: the sampler proposed {values}, which is not in the table; was it "
                "tabulated from this recipe's space?"
            )
        network = arch_of[key]
        if network in outcomes:  # the no-duplicate rule: told the twin's outcome, at no cost
            repeats += 1
            twin = outcomes[network]
            if twin is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, list(twin))
            continue
        repeats = 0
        seed = table_seed(table, search_seed)
        curve = table.curves[key][seed]
        stopped = rungs.run(curve)
        spent = stopped if stopped is not None else len(curve)
        cost += spent
        if stopped is None:
            final = tuple(curve[-1][:n])
            outcomes[network] = final
            finished.append(final)
            study.tell(trial, list(final))
        else:
            outcomes[network] = None
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        trajectory.trials.append({"key": key, "seed": seed, "epochs": spent, "pruned": stopped is not None})
        trajectory.points.append((cost, front_hypervolume(finished, table)))
    return trajectory


def _queue_warm_start(
    table: Table,
    space: Space,
    recipe: Recipe,
    study: Any,
    search_seed: int,
    settings: Settings,
    base: ArchConfig | None,
) -> int:
    """Queue the configurations nearest to the supernet's learned ratios (the supernet of the table seed
    this search seed draws) as the study's first trials; returns the supernet's cost in epochs."""
    if not table.supernet:
        raise NormsearchError(
            f"bench efficiency: the table {table.name} has no SN supernet runs; tabulate it again with the "
            "supernet (the default) for sn_warm"
        )
    seed = table_seed(table, search_seed)
    if seed not in table.supernet:
        raise NormsearchError(
            f"bench efficiency: the table {table.name} has no SN supernet run of seed {seed}"
        )
    supernet = table.supernet[seed]
    ranked = rank_configs(space, base or recipe.model, supernet["ratios"], fix_above=settings.fix_above)
    for values in queue(ranked, settings.neighbours):
        study.enqueue_trial(values, skip_if_exists=True)
    return len(supernet["curve"])
