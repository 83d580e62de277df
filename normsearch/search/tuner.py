"""Run a search: Ray Tune trials sampled by an Optuna study on disk, recorded as they happen.

The run folder holds everything a later command needs::

    <run>/recipe.yaml     the resolved recipe (CLI flags applied)
    <run>/space.yaml      the search space
    <run>/study.db        the Optuna study (SQLite): `optuna trials --storage sqlite:///<run>/study.db`
    <run>/trials.jsonl    one record per evaluation, appended by the driver as results arrive
    <run>/tune/           Ray Tune's experiment state, for `normsearch resume`

Trials that do not reach their last epoch (stopped by ASHA, interrupted, failed) are told to the study as
PRUNED or FAIL, never COMPLETE: stock OptunaSearch would record a stopped trial as COMPLETE with its partial
scores and let them into NSGA-II's population and the Pareto front.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from normsearch.errors import NormsearchError
from normsearch.recipe import Recipe
from normsearch.space import Space

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "2",
}
TUNE_DIR = "tune"


def quiet_ray_env() -> None:
    """Environment Ray reads at import: no usage stats, no auth prompt, trials keep our working dir."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start (or join) Ray quietly. Without an address, a private Ray on loopback: a plain `ray.init()`
    would silently join any cluster already running on this machine."""
    quiet_ray_env()
    import ray

    if ray.is_initialized():
        return
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, **common)
    else:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise NormsearchError(f"ray.address {address}: cannot connect ({error})") from None


# --- the trial ----------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _cached_data(data_json: str):
    """Domains are built once per worker process (actors are reused across trials)."""
    from normsearch.data.spec import DataConfig, load_data

    return load_data(DataConfig.model_validate_json(data_json))


def run_trial(config: dict[str, Any], recipe_json: str, space_json: str) -> None:
    """The Tune trainable: rebuild recipe and space, map the sampled values to an ArchConfig, train,
    and report every epoch (the last with ``final=True`` and the test accuracies under ``test``)."""
    import socket

    import ray
    import torch
    from ray import tune

    from normsearch.train import train_candidate

    recipe = Recipe.model_validate_json(recipe_json)
    space = Space.model_validate_json(space_json)
    values = {k: config[k] for k in space.params if k in config}
    arch = space.to_arch(recipe.model, values)
    data = _cached_data(recipe.data.model_dump_json())
    device = "cuda" if recipe.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    node = socket.gethostname() + ":" + str(os.getpid())
    node_id = ray.get_runtime_context().get_node_id()  # which Ray node ran the trial (cluster runs)

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, "node_id": node_id, "worker": node, "device": device})

    train_candidate(
        arch,
        data,
        recipe.data,
        recipe.train,
        seed=recipe.seed,
        report=report,
        threads=recipe.resources.cpu,
        device=device,
    )


# --- searcher ----------------------------------------------------------------------------------------
def make_sampler(recipe: Recipe):
    """The Optuna sampler the recipe names, seeded from it."""
    import optuna

    seed = recipe.search_seed
    algorithm = recipe.search.algorithm
    if algorithm == "nsga2":
        kwargs = {"population_size": recipe.search.population} if recipe.search.population else {}
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.BruteForceSampler(seed=seed)


def make_searcher(recipe: Recipe, space: Space, run_dir: Path):
    """OptunaSearch over the define-by-run space, the study on disk, final-only COMPLETE."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # BruteForceSampler, set_metric_names and TPE's `group` are stable in use here; the warnings are noise.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    class FinalOnlyOptunaSearch(OptunaSearch):
        """Tell the study COMPLETE only for trials whose last result has ``final=True``."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            complete = not error and bool(result) and bool(result.get("final"))
            if _is_finished(self._ot_study, ot_trial):
                # The study already closed this attempt (PRUNED when the driver was interrupted); the
                # resumed run finished it: record the finished attempt as a new trial.
                if complete:
                    self._ot_study.add_trial(
                        optuna.trial.create_trial(
                            params=ot_trial.params,
                            distributions=ot_trial.distributions,
                            values=[result[m] for m in self._metric],
                            user_attrs={"ray_trial_id": trial_id, "resumed": True},
                        )
                    )
                self._completed_trials.add(trial_id)
                return
            if not complete:
                state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
                if result and "epoch" in result:
                    ot_trial.set_user_attr("stopped_at_epoch", int(result["epoch"]))
                self._ot_study.tell(ot_trial, None, state=state)
                self._completed_trials.add(trial_id)
                return
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            super().on_trial_complete(trial_id, result, error)

    objectives = recipe.search.objectives
    storage = optuna.storages.RDBStorage(f"sqlite:///{(run_dir / 'study.db').resolve()}")
    searcher = FinalOnlyOptunaSearch(
        space=space.sample,
        metric=list(objectives),
        mode=list(objectives.values()),
        sampler=make_sampler(recipe),
        study_name=recipe.name,
        storage=storage,
    )
    return searcher


def _is_finished(study: Any, ot_trial: Any) -> bool:
    return study._storage.get_trial(ot_trial._trial_id).state.is_finished()


def close_interrupted(run_dir: Path, recipe: Recipe) -> int:
    """After an interrupted fit: study trials still RUNNING become PRUNED (user attr "interrupted") and
    trials.jsonl gets an "interrupted" record for each trial whose last record was "running". A later
    `normsearch resume` re-runs them. Returns how many trials were closed."""
    import optuna

    study = optuna.load_study(study_name=recipe.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.PRUNED)
        closed += 1
    if (run_dir / "trials.jsonl").is_file():
        from normsearch.run.records import read_trials

        with (run_dir / "trials.jsonl").open("a") as handle:
            for trial in read_trials(run_dir):
                if trial.status == "running":
                    record = {
                        "trial_id": trial.trial_id,
                        "status": "interrupted",
                        "time": time.time(),
                        "config": trial.config,
                        "arch": trial.arch,
                        "epoch": trial.epoch,
                    }
                    handle.write(json.dumps(record) + "\n")
    return closed


def set_metric_names(run_dir: Path, recipe: Recipe) -> None:
    """Name the study's objectives so optuna-dashboard and the optuna CLI label them."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=recipe.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    if study.metric_names is None:
        study.set_metric_names(list(recipe.search.objectives))


# --- recording and live view ---------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    from normsearch import __version__

    return {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "normsearch": __version__,
    }


@dataclass
class Progress:
    """What the live view shows; updated by the recorder."""

    total: int
    started: float = field(default_factory=time.time)
    done: int = 0
    pruned: int = 0
    failed: int = 0
    running: set[str] = field(default_factory=set)
    best_source: float | None = None
    best_target: float | None = None
    front_size: int = 0
    points: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def eta(self) -> float | None:
        finished = self.done + self.pruned + self.failed
        if not finished:
            return None
        return self.elapsed / finished * max(self.total - finished, 0)


def make_recorder(
    recipe: Recipe, space: Space, run_dir: Path, on_change: Callable[[Progress], None] | None, total: int
):
    """A Tune callback that appends every result to trials.jsonl and keeps `Progress` up to date."""
    from ray.tune import Callback

    from normsearch.results.pareto import non_dominated

    objectives = recipe.search.objectives
    meta = versions()

    class Recorder(Callback):
        def __init__(self, on_change: Callable[[Progress], None] | None) -> None:
            # `on_change` is an argument, not a closure variable: cloudpickle pickles this class by value
            # with its closure, and the live display it reaches holds locks.
            self.progress = Progress(total=total)
            self.last: dict[str, dict[str, Any]] = {}
            self.archs: dict[str, dict[str, Any] | str] = {}  # trial id -> ArchConfig dict or its error
            self.path = run_dir / "trials.jsonl"
            self.on_change = on_change

        def __getstate__(self) -> dict[str, Any]:
            state = dict(self.__dict__)
            state["on_change"] = None  # Tune pickles callbacks; the live display does not pickle
            return state

        def _write(self, trial: Any, result: dict[str, Any] | None, status: str) -> None:
            values = {k: trial.config[k] for k in space.params if k in trial.config}
            record: dict[str, Any] = {
                "trial_id": trial.trial_id,
                "status": status,
                "time": time.time(),
                "config": values,
                "seed": recipe.seed,
                "versions": meta,
            }
            if result is not None:
                metrics = {k: v for k, v in result.items() if k in _RESULT_KEYS or k.startswith("select/")}
                record["epoch"] = result.get("epoch")
                record["final"] = bool(result.get("final"))
                record["metrics"] = metrics
                test = {k.removeprefix("test/"): v for k, v in result.items() if k.startswith("test/")}
                if isinstance(result.get("test"), dict):
                    test = dict(result["test"])
                if test:
                    record["test"] = test
                record["node_id"] = result.get("node_id")
            if trial.trial_id not in self.archs:  # once per trial, not once per epoch
                try:
                    self.archs[trial.trial_id] = space.to_arch(recipe.model, values).to_dict()
                except NormsearchError as error:
                    self.archs[trial.trial_id] = str(error)
            arch = self.archs[trial.trial_id]
            record["arch" if isinstance(arch, dict) else "arch_error"] = arch
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

        def _changed(self) -> None:
            if self.on_change is not None:
                self.on_change(self.progress)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.progress.running.add(trial.trial_id)
            self._changed()

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.last[trial.trial_id] = result
            self._write(trial, result, "running" if not result.get("final") else "complete")
            self._changed()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = self.last.get(trial.trial_id)
            self.progress.running.discard(trial.trial_id)
            if result and result.get("final"):
                self.progress.done += 1
                point = tuple(float(result[m]) for m in objectives)
                self.progress.points[trial.trial_id] = point
                src, tgt = result.get("source_val_acc"), result.get("target_select_acc")
                if src is not None:
                    self.progress.best_source = max(self.progress.best_source or src, src)
                if tgt is not None:
                    self.progress.best_target = max(self.progress.best_target or tgt, tgt)
                pts = list(self.progress.points.values())
                self.progress.front_size = len(non_dominated(pts, list(objectives.values())))
            else:
                self.progress.pruned += 1
                self._write(trial, result, "pruned")
            self._changed()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.progress.running.discard(trial.trial_id)
            self.progress.failed += 1
            self._write(trial, self.last.get(trial.trial_id), "failed")
            self._changed()

    return Recorder(on_change)


_RESULT_KEYS = {
    "epoch",
    "loss",
    "train_acc",
    "source_val_acc",
    "target_select_acc",
    "lr",
    "images_per_s",
    "epoch_seconds",
    "params",
    "final",
    "converged",
    "worker",
    "device",
}


# --- the run -------------------------------------------------------------------------------------------
def prepare_run_dir(recipe: Recipe, space: Space, run_dir: Path) -> None:
    """Create the run folder and write the resolved recipe and the space; refuse to overwrite a run."""
    if (run_dir / "recipe.yaml").exists():
        raise NormsearchError(
            f"output {run_dir}: already holds a run; use `normsearch resume {run_dir}` or another --output"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    (run_dir / "space.yaml").write_text(yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))


def load_run(run_dir: Path) -> tuple[Recipe, Space]:
    """The recipe and space a run folder was started with."""
    from normsearch.config import read_mapping, validate

    if not (run_dir / "recipe.yaml").is_file():
        raise NormsearchError(f"{run_dir}: not a run folder (no recipe.yaml)")
    recipe = validate(Recipe, read_mapping(run_dir / "recipe.yaml"), str(run_dir / "recipe.yaml"))
    space = validate(Space, read_mapping(run_dir / "space.yaml"), str(run_dir / "space.yaml"))
    return recipe, space


def run_search(
    recipe: Recipe,
    space: Space,
    run_dir: Path,
    on_change: Callable[[Progress], None] | None = None,
    resume: bool = False,
) -> None:
    """Run (or resume) the search of `recipe` over `space`, writing into `run_dir`."""
    run_dir = run_dir.resolve()
    if not resume:
        prepare_run_dir(recipe, space, run_dir)
    start_ray(recipe.ray.address, num_cpus=None)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, recipe_json=recipe.model_dump_json(), space_json=space.model_dump_json()
        ),
        {"cpu": recipe.resources.cpu, "gpu": recipe.resources.gpu},
    )
    tune_path = run_dir / TUNE_DIR
    if resume and tune_path.exists():
        # The restored experiment brings back its pickled recorder (without the live view): it keeps
        # appending to trials.jsonl; finished trials are not re-run.
        tuner = tune.Tuner.restore(str(tune_path), trainable, resume_unfinished=True, restart_errored=True)
    else:
        sched = recipe.search.scheduler
        scheduler = (
            ASHAScheduler(
                metric=sched.metric,
                mode=sched.mode,
                time_attr="training_iteration",
                max_t=recipe.train.epochs,
                grace_period=sched.grace_period,
                reduction_factor=sched.reduction_factor,
            )
            if sched.kind == "asha"
            else FIFOScheduler()
        )
        num_samples = recipe.search.num_samples
        size = space.size()
        if recipe.search.algorithm == "grid" and size is not None:
            num_samples = min(num_samples, size)
        recorder = make_recorder(recipe, space, run_dir, on_change, total=num_samples)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(recipe, space, run_dir),
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=recipe.search.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(run_dir),
                verbose=0,
                callbacks=[recorder],
                failure_config=tune.FailureConfig(max_failures=recipe.search.failures.retries),
            ),
        )
    try:
        tuner.fit()
    finally:
        close_interrupted(run_dir, recipe)
        set_metric_names(run_dir, recipe)


def estimate_seconds(recipe: Recipe, steps: int = 3) -> tuple[float, float]:
    """(seconds per trial, seconds for the run): a few timed train steps of the base model on random
    inputs at the recipe's batch and image size and thread count, scaled to the training budget, plus
    evaluation and a fixed Ray start-up allowance. A rough guide, not a promise."""
    import math
    import time as _time

    import torch

    from normsearch.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.resources.cpu)
    try:
        model = build_model(recipe.model)
        x = torch.randn(
            recipe.train.batch_size, recipe.model.backbone.in_channels, recipe.data.size, recipe.data.size
        )
        y = torch.zeros(recipe.train.batch_size, dtype=torch.long)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        model(x).sum()  # warm-up
        tic = _time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_step = (_time.perf_counter() - tic) / steps
    finally:
        torch.set_num_threads(threads)
    n_train = recipe.data.n_train if recipe.data.dataset == "synthetic" else 1000
    steps_per_epoch = math.ceil(n_train / recipe.train.batch_size)
    evaluated = recipe.data.n_val * (1 + len(recipe.data.select))
    per_trial = recipe.train.epochs * (steps_per_epoch * per_step * 1.2 + evaluated / 3000) + 4
    waves = math.ceil(recipe.search.num_samples / recipe.search.max_concurrent)
    return per_trial, waves * per_trial + 15
